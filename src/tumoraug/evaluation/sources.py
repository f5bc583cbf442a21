"""Where the protocol's synthetic ROIs come from: a model, a bank or a ROI folder.

The protocol reads its synthetic items once per epoch and run; `materialize` reads a
dataset once into memory so that a generator-backed dataset generates each ROI only once.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset

from tumoraug.data import ROIDataset
from tumoraug.errors import ConfigError
from tumoraug.evaluation.classifier import item_tensors
from tumoraug.progress import progress_bar
from tumoraug.sampling import SamplingConfig


def materialize(dataset: Dataset, *, progress: bool = False) -> list[tuple[torch.Tensor, int]]:
    """Read every item once into memory as ``(image, label)`` pairs, in order.

    Sequential reads let a `SyntheticTumorDataset` generate its items in blocks.
    """
    size = len(dataset)  # type: ignore[arg-type]
    items = []
    with progress_bar("synthetic ROIs", size, enabled=progress) as bar:
        for index in range(size):
            items.append(item_tensors(dataset[index]))
            bar.advance()
    return items


def synthetic_source(
    *,
    model: str | Path | None = None,
    bank: str | Path | None = None,
    roi_dir: str | Path | None = None,
    count: int = 0,
    class_ratio: float = 0.5,
    seed: int = 0,
    sampling: SamplingConfig | None = None,
    device: str = "auto",
    progress: bool = False,
) -> Dataset | None:
    """The synthetic dataset of the protocol from at most one of three sources, or None.

    ``model``: a `TumorGenerator` folder or Hub id; ``count`` ROIs (a fraction
    ``class_ratio`` of them HGG) are generated once with ``seed`` and ``sampling`` (the
    `SamplingConfig` defaults when None) and kept in memory. ``bank``: a `SyntheticBank`
    written earlier, read as it is. ``roi_dir``: a ROI cache folder (`ROIDataset` layout)
    holding synthetic ROIs made by any other means.
    """
    given = [name for name, v in (("model", model), ("bank", bank), ("roi_dir", roi_dir)) if v]
    if len(given) > 1:
        raise ConfigError(f"give one synthetic source, got {' and '.join(given)}")
    if model and count < 1:
        raise ConfigError(f"count: expected the number of ROIs to generate (>= 1), got {count}")
    if model:
        from tumoraug.augment import SyntheticTumorDataset

        dataset = SyntheticTumorDataset(
            str(model),
            length=count,
            class_ratio=class_ratio,
            seed=seed,
            device=device,
            sampling=sampling,
        )
        return materialize(dataset, progress=progress)  # type: ignore[return-value]
    if bank:
        from tumoraug.augment import SyntheticTumorDataset

        return SyntheticTumorDataset.from_bank(bank)
    if roi_dir:
        return ROIDataset(roi_dir)
    return None
