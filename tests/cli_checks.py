"""Checks shared by the reliability catalogues: a clean CLI failure, a folder's hashes."""

from __future__ import annotations

import hashlib
from pathlib import Path


def failed_cleanly(result, *phrases: str) -> None:
    """Exit code 1 through SystemExit, one error line (the last) naming ``phrases``, no
    traceback; a progress bar may come before it."""
    assert isinstance(result.exception, SystemExit) and result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert [line for line in lines if line.startswith("error: ")] == lines[-1:], result.output
    for phrase in phrases:
        assert phrase in result.output, (phrase, result.output)


def tree(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder`` (hidden ones included), by relative path."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }
