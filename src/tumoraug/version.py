"""The version of tumoraug, in a module of its own so that every module can import it
without importing the package's public API (which would be an import cycle)."""

__version__ = "0.1.0.dev0"
