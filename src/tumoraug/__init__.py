"""tumoraug: class-conditional synthetic 3D brain-tumor ROIs as a data-augmentation plugin."""

__version__ = "0.1.0.dev0"

from tumoraug.bank import SyntheticBank
from tumoraug.dataset import SyntheticThenReal, SyntheticTumorDataset, mix
from tumoraug.errors import CheckpointError, ConfigError, DataError, LabelError, TumorAugError
from tumoraug.generator import TumorGenerator
from tumoraug.labels import GRADES, to_grade, to_label
from tumoraug.transforms import RandomSyntheticReplace

__all__ = [
    "GRADES",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "LabelError",
    "RandomSyntheticReplace",
    "SyntheticBank",
    "SyntheticThenReal",
    "SyntheticTumorDataset",
    "TumorAugError",
    "TumorGenerator",
    "__version__",
    "mix",
    "to_grade",
    "to_label",
]
