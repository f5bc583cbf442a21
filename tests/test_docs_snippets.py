"""The Python snippets of docs/entry_points.md run as written (a phantom cache for "cache/")."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from extras import require_extra

PAGE = Path(__file__).resolve().parents[1] / "docs" / "entry_points.md"


def snippets() -> list[str]:
    return re.findall(r"```python\n(.*?)```", PAGE.read_text(), re.S)


def test_the_page_has_a_snippet_per_library():
    text = "\n".join(snippets())
    assert len(snippets()) == 3 and "torchio" in text and "monai" in text and "mix(" in text


@pytest.mark.parametrize("index", range(3))
def test_snippet_runs(index, tmp_path):
    code = snippets()[index]
    if "monai" in code:
        require_extra("monai")
    if '"cache/"' in code:
        from tumoraug.data import preprocess, write_phantom_dataset

        write_phantom_dataset(tmp_path / "raw", per_class=2, seed=0, shape=(48, 48, 48))
        preprocess(tmp_path / "raw", tmp_path / "cache", size=32)
        code = code.replace('"cache/"', repr(str(tmp_path / "cache")))
    exec(compile(code, f"{PAGE.name}[{index}]", "exec"), {})
