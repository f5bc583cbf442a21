"""Models shipped inside the package.

``demo/`` holds a small demo `TumorGenerator` (32³ FLAIR-like ROIs) trained on the
procedural phantoms of `tumoraug.data.phantom`, not on patients: it exists so that
``tumoraug generate`` works offline right after installation. Its model card
(``demo/README.md``) says how it was trained and how to train a real model on BraTS 2019.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from tumoraug.errors import CheckpointError

if TYPE_CHECKING:
    from tumoraug.generator import TumorGenerator

DEMO_DIR = Path(__file__).resolve().parent / "demo"


def demo_model_path() -> Path:
    """Folder of the embedded demo model (``TumorGenerator.from_pretrained`` opens it)."""
    if not (DEMO_DIR / "tumoraug.json").is_file():
        raise CheckpointError(
            f"{DEMO_DIR}: the embedded demo model is missing from this installation "
            "(was the package built without its package data?); pass --model <folder or Hub id>"
        )
    return DEMO_DIR


def sample_checksums(generator: TumorGenerator, grade: str, seeds: Sequence[int]) -> dict:
    """SHA-256 of the token grids (int64) and volumes (float32) that ``generator`` makes for
    ``grade`` with ``seeds`` at its default sampling: what the demo's reference file records
    (``scripts/record_demo_checksums.py``) and its test compares."""
    import torch

    from tumoraug.labels import to_label

    def digest(tensor: torch.Tensor) -> str:
        return hashlib.sha256(tensor.contiguous().cpu().numpy().tobytes()).hexdigest()

    seeds = list(seeds)
    tokens = generator.generate_tokens([to_label(grade)] * len(seeds), seeds)
    volumes = generator.generate([grade] * len(seeds), seed=seeds, batch_size=3)
    return {"seeds": seeds, "tokens": digest(tokens.to(torch.int64)), "volumes": digest(volumes)}
