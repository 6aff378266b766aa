"""Concrete stages of a shot (files to files), assembled into a graph by :mod:`engine.shotgraph`."""
