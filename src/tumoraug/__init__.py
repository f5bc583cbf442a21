"""tumoraug: class-conditional synthetic 3D brain-tumor ROIs as a data-augmentation plugin."""

__version__ = "0.1.0.dev0"

from tumoraug.errors import CheckpointError, ConfigError, DataError, LabelError, TumorAugError
from tumoraug.generator import TumorGenerator
from tumoraug.labels import GRADES, to_grade, to_label

__all__ = [
    "GRADES",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "LabelError",
    "TumorAugError",
    "TumorGenerator",
    "__version__",
    "to_grade",
    "to_label",
]
