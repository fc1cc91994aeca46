"""custintel: shared settings and version for every custintel package."""

__version__ = "0.1.0"
