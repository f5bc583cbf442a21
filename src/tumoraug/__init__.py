"""tumoraug: class-conditional synthetic 3D brain-tumor ROIs as a data-augmentation plugin."""

from tumoraug.augment import (
    RandomSyntheticReplace,
    SyntheticBank,
    SyntheticReplace,
    SyntheticThenReal,
    SyntheticTumorDataset,
    mix,
)
from tumoraug.config import TokenizerConfig, TransformerConfig
from tumoraug.errors import CheckpointError, ConfigError, DataError, LabelError, TumorAugError
from tumoraug.generator import TumorGenerator
from tumoraug.generators import open_generator
from tumoraug.labels import GRADES, to_grade, to_label
from tumoraug.sampling import SamplingConfig
from tumoraug.version import __version__

__all__ = [
    "GRADES",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "LabelError",
    "RandomSyntheticReplace",
    "SamplingConfig",
    "SyntheticBank",
    "SyntheticReplace",
    "SyntheticThenReal",
    "SyntheticTumorDataset",
    "TokenizerConfig",
    "TransformerConfig",
    "TumorAugError",
    "TumorGenerator",
    "__version__",
    "mix",
    "open_generator",
    "to_grade",
    "to_label",
]
