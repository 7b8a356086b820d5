"""relgraph's version: the one place it is written (pyproject.toml reads it, explainers record it)."""

__version__ = "0.1.0"
