"""Thin submitit job definitions; all real work is in `engine`."""
