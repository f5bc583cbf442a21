"""Both evaluations end to end on folders: a ROI cache in, the report files out.

These are what ``tumoraug evaluate`` and ``tumoraug evaluate-samples`` call, so that a
script gets exactly the command's behaviour from one function call.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tumoraug.data import ROIDataset
from tumoraug.evaluation.classifier import ClassifierConfig, item_tensors
from tumoraug.evaluation.protocol import (
    CONDITIONS,
    ProtocolConfig,
    ProtocolResult,
    run_protocol,
    synthetic_demand,
)
from tumoraug.evaluation.samples import SampleReport, evaluate_samples
from tumoraug.evaluation.sources import check_one_source, synthetic_sources
from tumoraug.generators import Settings


def evaluate_cache(
    data: str | Path,
    out: str | Path,
    *,
    protocol: ProtocolConfig | Mapping[str, Any] | None = None,
    model: str | Path | None = None,
    bank: str | Path | None = None,
    synthetic: str | Path | None = None,
    conditions: Sequence[str] | None = None,
    class_ratio: float = 0.5,
    seed: int = 0,
    width: int | None = None,
    network: str | None = None,
    sampling: Settings = None,
    guidance_values: Sequence[float] | None = None,
    progress: bool = False,
) -> tuple[ProtocolResult, dict[str, Path]]:
    """Run the downstream protocol on the ROI cache ``data``; write its reports into ``out``.

    ``protocol``: a `ProtocolConfig`, or a dict of its fields (the rest keep their
    defaults). The synthetic data comes from at most one of ``model``, ``bank`` or
    ``synthetic`` (a ROI cache), see `synthetic_sources`: a model generates, once per value
    of ``guidance_values`` (default: the guidance of ``sampling``), as many ROIs as the
    largest arm draws in one run (`synthetic_demand`), a fraction ``class_ratio`` of them
    HGG, all with ``seed``. ``conditions`` default to ``real``, ``mixed`` and ``pretrain``
    with a synthetic source, else ``("real",)``. ``network`` picks the classifier
    (`ClassifierConfig.network`, default `DEFAULT_NETWORK`); ``width`` overrides the
    ``base_width`` of tumoraug's own. The generator must not have seen any subject of
    ``data``.
    Returns the result and the paths of ``results.md``, ``results.json`` and ``roc.png``.
    """
    if not isinstance(protocol, ProtocolConfig):
        protocol = ProtocolConfig(**dict(protocol or {}))
    check_one_source(model, bank, synthetic)
    real = ROIDataset(data)
    if conditions is None:
        conditions = CONDITIONS if (model or bank or synthetic) else ("real",)
    protocol = protocol.replace(conditions=tuple(conditions))
    count = synthetic_demand(real.labels, protocol, class_ratio) if model else 0
    sources, provenance = synthetic_sources(
        model=model if protocol.needs_synthetic else None,
        bank=bank,
        roi_dir=synthetic,
        count=count,
        class_ratio=class_ratio,
        seed=seed,
        sampling=sampling,
        guidance_values=guidance_values,
        device=protocol.device,
        progress=progress,
    )
    channels = item_tensors(real[0])[0].shape[0]
    fields = {"base_width": width, "network": network}
    classifier = ClassifierConfig(
        in_channels=channels, **{k: v for k, v in fields.items() if v is not None}
    )
    result = run_protocol(
        real,
        sources,
        config=protocol,
        classifier=classifier,
        provenance=provenance,
        progress=progress,
    )
    return result, result.save(out)


def display_names(models: Sequence[str | Path]) -> list[str]:
    """One table name per model: its folder name (or Hub id), made unique with ``-<index>``."""
    names: list[str] = []
    for index, spec in enumerate(models):
        name = Path(spec).name or str(spec)
        names.append(name if name not in names else f"{name}-{index}")
    return names


def compare_models(
    data: str | Path,
    models: Sequence[str | Path],
    out: str | Path,
    *,
    n_per_class: int = 16,
    seed: int = 0,
    sampling: Settings = None,
    feature_size: int | None = 16,
    max_pairs: int | None = 1000,
    device: str = "auto",
    cpu_bf16: bool = False,
) -> tuple[SampleReport, dict[str, Path]]:
    """`evaluate_samples` of model folders / Hub ids against the ROI cache ``data``.

    Every model gets the same labels, seeds and ``sampling`` (under bf16 autocast on the
    CPU too with ``cpu_bf16``, the precision whose quality cost this measures); the report
    is written into
    ``out`` (``samples.md``, ``samples.json``, ``samples_montage.png``).
    Returns the report and those paths.
    """
    from tumoraug.generators import open_generator

    generators = {
        name: open_generator(spec, device=device, cpu_bf16=cpu_bf16)
        for name, spec in zip(display_names(models), models, strict=True)
    }
    report = evaluate_samples(
        ROIDataset(data),
        generators,
        n_per_class=n_per_class,
        seed=seed,
        sampling=sampling,
        feature_size=feature_size,
        max_pairs=max_pairs,
    )
    return report, report.save(out)
