"""The package version, at the bottom layer so every module can name it without importing the package root."""

__version__ = "0.1.0"
