"""The plugin surface: synthetic ROIs for PyTorch / TorchIO pipelines.

Everything here makes its volumes through one `Source` (`GeneratorSource` over a
`TumorGenerator`, or a `SyntheticBank`): the dataset, the mixing helpers and the TorchIO
transforms take either, and the same (label, seed) gives the same volume from each.
The MONAI dictionary transforms live in `tumoraug.augment.monai`, imported on request only
(it needs the ``monai`` extra).
"""

from tumoraug.augment.bank import SyntheticBank
from tumoraug.augment.dataset import SyntheticTumorDataset, make_item_dict, make_subject
from tumoraug.augment.mixing import MixedDataset, SyntheticThenReal, mix
from tumoraug.augment.serving import BankBatches, BankLoader
from tumoraug.augment.source import (
    GeneratorSource,
    Source,
    as_source,
    class_labels,
    item_seeds,
    resolve_labels,
)
from tumoraug.augment.storage import dequantize, quantize
from tumoraug.augment.transforms import RandomSyntheticReplace, SyntheticReplace

__all__ = [
    "BankBatches",
    "BankLoader",
    "GeneratorSource",
    "MixedDataset",
    "RandomSyntheticReplace",
    "Source",
    "SyntheticBank",
    "SyntheticReplace",
    "SyntheticThenReal",
    "SyntheticTumorDataset",
    "as_source",
    "class_labels",
    "dequantize",
    "item_seeds",
    "make_item_dict",
    "make_subject",
    "mix",
    "quantize",
    "resolve_labels",
]
