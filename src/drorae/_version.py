"""The package version, in a module of its own: the model classes write it into what they save, and importing it
from ``drorae/__init__`` (which imports them) would be an import cycle."""

__version__ = "0.5.0"
