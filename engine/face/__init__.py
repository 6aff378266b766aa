"""Faces: landmarks, the morphable face model and its loaders, fitting, crops, rasteriser."""
