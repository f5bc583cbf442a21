"""The files of a report: one Markdown table and one strict-JSON record, written atomically."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from tumoraug.checkpoint import atomic_write_json, atomic_write_text


def json_safe(value: Any) -> Any:
    """``value`` with every NaN (an undefined AUC) replaced by None, so that it is strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def write_tables(
    out_dir: str | Path, stem: str, markdown: str, data: dict[str, Any]
) -> dict[str, Path]:
    """Write a report's ``<stem>.md`` and ``<stem>.json`` into ``out_dir`` (created).

    Returns ``{"markdown": path, "json": path}``; a report adds its figures to that dict.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out_dir / f"{stem}.md", "json": out_dir / f"{stem}.json"}
    atomic_write_text(paths["markdown"], markdown)
    atomic_write_json(paths["json"], json_safe(data))
    return paths
