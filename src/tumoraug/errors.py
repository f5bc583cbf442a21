"""The exception hierarchy: every error tumoraug raises on bad input is a `TumorAugError`.

Messages name the file or field at fault and say what was expected, so that a user can fix
the input without reading a traceback from inside torch or nibabel.
"""

from __future__ import annotations


class TumorAugError(Exception):
    """Base class of all tumoraug errors."""


class DataError(TumorAugError):
    """A scan, segmentation, folder or cache entry is missing, corrupt or inconsistent."""


class ConfigError(TumorAugError, ValueError):
    """A configuration value is unknown, out of range or inconsistent with another one."""


class CheckpointError(TumorAugError):
    """A checkpoint is missing, incomplete, tampered with or from an incompatible version."""


class LabelError(TumorAugError, ValueError):
    """A class label is neither a known grade string nor a valid integer class."""
