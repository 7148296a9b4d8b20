"""The package version (one place: the command line, reports and the metadata read it)."""

__version__ = "0.1.0"
