"""The shared report files (Markdown + strict JSON) and the ROC figure."""

from __future__ import annotations

import json
import math

import numpy as np
from PIL import Image

from tumoraug.evaluation import save_roc_png
from tumoraug.evaluation.report import json_safe, write_tables


def test_json_safe_turns_nan_into_null_everywhere():
    data = {"auc": math.nan, "runs": [{"f1": 0.5, "auc": math.nan}], "pair": (1.0, math.nan)}
    assert json_safe(data) == {"auc": None, "runs": [{"f1": 0.5, "auc": None}], "pair": [1.0, None]}


def test_write_tables_writes_markdown_and_strict_json(tmp_path):
    paths = write_tables(tmp_path / "new", "results", "| a |\n", {"auc": math.nan, "n": 3})
    assert paths == {"markdown": tmp_path / "new/results.md", "json": tmp_path / "new/results.json"}
    assert paths["markdown"].read_text() == "| a |\n"
    text = paths["json"].read_text()
    assert "NaN" not in text and json.loads(text) == {"auc": None, "n": 3}


def test_save_roc_png_draws_curves_in_colour(tmp_path):
    curve = (np.array([0.0, 0.0, 1.0]), np.array([0.0, 1.0, 1.0]), 1.0)
    path = save_roc_png({"Real only": curve, "Mixed": curve}, tmp_path / "roc.png", size=300)
    with Image.open(path) as png:
        assert png.size == (300, 300)
        pixels = np.asarray(png.convert("RGB")).reshape(-1, 3)
    assert any(r != g or g != b for r, g, b in pixels[::5])
