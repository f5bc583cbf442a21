"""Models shipped inside the package.

``demo/`` holds a small demo `TumorGenerator` (32³ FLAIR-like ROIs) trained on the
procedural phantoms of `tumoraug.data.phantom`, not on patients: it exists so that
``tumoraug generate`` works offline right after installation. Its model card
(``demo/README.md``) says how it was trained and how to train a real model on BraTS 2019.
"""

from __future__ import annotations

from pathlib import Path

from tumoraug.errors import CheckpointError

DEMO_DIR = Path(__file__).resolve().parent / "demo"


def demo_model_path() -> Path:
    """Folder of the embedded demo model (``TumorGenerator.from_pretrained`` opens it)."""
    if not (DEMO_DIR / "tumoraug.json").is_file():
        raise CheckpointError(
            f"{DEMO_DIR}: the embedded demo model is missing from this installation "
            "(was the package built without its package data?); pass --model <folder or Hub id>"
        )
    return DEMO_DIR
