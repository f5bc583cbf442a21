"""Where the protocol's synthetic ROIs come from: a model, a bank or a ROI folder.

The protocol reads its synthetic items once per epoch and run; `materialize` reads a
dataset once into memory so that a generator-backed dataset generates each ROI only once.
`synthetic_sources` makes one source per guidance scale of a model (or reads a bank or a
folder) and describes each (model id or bank, count, seed, sampling) for the report.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from tumoraug.data import ROIDataset
from tumoraug.errors import ConfigError
from tumoraug.evaluation.classifier import item_tensors
from tumoraug.generators import Settings, open_generator, resolve_sampling, with_overrides
from tumoraug.progress import progress_bar


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


def check_one_source(model: Any, bank: Any, roi_dir: Any) -> None:
    """Raise `ConfigError` when more than one of the three synthetic sources is given."""
    given = [name for name, v in (("model", model), ("bank", bank), ("roi_dir", roi_dir)) if v]
    if len(given) > 1:
        raise ConfigError(f"give one synthetic source, got {' and '.join(given)}")


def synthetic_source(
    *,
    model: str | Path | None = None,
    bank: str | Path | None = None,
    roi_dir: str | Path | None = None,
    count: int = 0,
    class_ratio: float = 0.5,
    seed: int = 0,
    sampling: Settings = None,
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
    check_one_source(model, bank, roi_dir)
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


def synthetic_sources(
    *,
    model: str | Path | None = None,
    bank: str | Path | None = None,
    roi_dir: str | Path | None = None,
    count: int = 0,
    class_ratio: float = 0.5,
    seed: int = 0,
    sampling: Settings = None,
    guidance_values: Sequence[float] | None = None,
    device: str = "auto",
    progress: bool = False,
) -> tuple[dict[str, Dataset], dict[str, dict[str, Any]]]:
    """The protocol's synthetic sources by name, and the description of each.

    With a ``model`` (any generator folder or Hub id): one source per value of
    ``guidance_values`` (default: the guidance of ``sampling``), named ``"guidance <g>"``,
    each ``count`` ROIs generated once with the same ``seed`` and labels, the guidance
    scale ``g`` overriding that of ``sampling``; a generator without guidance (the
    3D-αWGAN baseline) makes one source, named ``"model"``. A ``bank`` or a
    ``roi_dir`` is one source, read as it is (its guidance, if any, was fixed when it was
    made: ``guidance_values`` is an error there). No source: two empty dicts.
    """
    check_one_source(model, bank, roi_dir)
    if guidance_values is not None and len(guidance_values) == 0:
        raise ConfigError("guidance_values: expected at least one guidance scale, got none")
    if guidance_values and (bank or roi_dir):
        raise ConfigError(
            "guidance_values need a model to generate with; a bank or ROI folder was made "
            "with its own guidance (build one bank per guidance scale instead)"
        )
    datasets: dict[str, Dataset] = {}
    info: dict[str, dict[str, Any]] = {}
    if model:
        base = resolve_sampling(open_generator(model, device=device), sampling)
        guided = hasattr(base, "guidance_scale")
        for guidance in guidance_values or (getattr(base, "guidance_scale", None),):
            settings = (
                base
                if guidance is None
                else with_overrides(base, {"guidance_scale": float(guidance)})
            )
            name = f"guidance {float(guidance):g}" if guided else "model"
            datasets[name] = synthetic_source(  # type: ignore[assignment]
                model=model, count=count, class_ratio=class_ratio, seed=seed,
                sampling=settings, device=device, progress=progress,
            )  # fmt: skip
            info[name] = {
                "kind": "model", "model": str(model), "count": count, "class_ratio": class_ratio,
                "seed": seed, "sampling": settings.to_dict(),
                "guidance": None if guidance is None else float(guidance),
            }  # fmt: skip
    elif bank:
        from tumoraug.augment import SyntheticBank

        opened = SyntheticBank.open(bank)
        name = f"bank {Path(bank).name}"
        datasets[name] = synthetic_source(bank=bank)  # type: ignore[assignment]
        info[name] = {
            "kind": "bank", "bank": str(bank), "model": opened.model_id, "count": len(opened),
            "seed": opened.seed, "settings": opened.settings,
            "guidance": opened.settings.get("guidance_scale"),
        }  # fmt: skip
    elif roi_dir:
        name = f"ROI folder {Path(roi_dir).name}"
        folder = ROIDataset(roi_dir)
        datasets[name] = folder
        info[name] = {"kind": "roi_dir", "path": str(roi_dir), "count": len(folder)}
    return datasets, info
