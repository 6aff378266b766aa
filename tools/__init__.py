"""Command-line entry points of Portrait Engine (thin wrappers over `engine`)."""
