"""The checkpoint folders of a training run: atomic writes, exact reloads, the metrics log.

Layout and guarantees: see `tumoraug.training.loop`. A checkpoint folder is complete or
absent: it is written under a temporary name and renamed into place.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from torch import nn

from tumoraug.checkpoint import (
    PretrainedMixin,
    atomic_save_tensors,
    atomic_write_text,
    load_state,
    load_state_dict_strict,
    load_weights,
    read_checkpoint_config,
    save_state,
)
from tumoraug.errors import CheckpointError
from tumoraug.training.config import TrainConfig

CHECKPOINT_DIR = "checkpoints"
METRICS_NAME = "metrics.jsonl"
_STEP_DIR = re.compile(r"^step_(\d{8})$")


def _checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    root = output_dir / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name))]
    return sorted(found)


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint folder under ``output_dir/checkpoints``, if any."""
    found = _checkpoints(Path(output_dir))
    return found[-1][1] if found else None


def save_checkpoint(
    output_dir: Path,
    step: int,
    raw: dict[str, nn.Module],
    optimizers: dict[str, Any],
    task: Any,
    rngs: list[dict[str, Any]],
    train: TrainConfig,
) -> Path:
    """Write checkpoint ``step`` atomically (temp folder, then rename); keep the newest few."""
    root = output_dir / CHECKPOINT_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp_step_{step:08d}_", dir=root))
    try:
        for name, module in raw.items():
            if isinstance(module, PretrainedMixin):
                module.save_pretrained(tmp / name)
            else:
                atomic_save_tensors(module.state_dict(), tmp / name / "model.safetensors")
        state = {
            "step": step,
            "rng": rngs,
            "optimizers": {n: o.state_dict() for n, o in optimizers.items()},
            "task": task.state_dict() if hasattr(task, "state_dict") else {},
            "train_config": train.to_dict(),
            "run": task.describe() if hasattr(task, "describe") else {},
        }
        save_state(state, tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for _, old in _checkpoints(output_dir)[: -train.keep_checkpoints]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(
    directory: Path, raw: dict[str, nn.Module], optimizers: dict[str, Any], task: Any
) -> dict[str, Any]:
    """Restore modules, optimizers and task state from a checkpoint; return its state."""
    for name, module in raw.items():
        sub = directory / name
        if isinstance(module, PretrainedMixin):
            meta = read_checkpoint_config(sub, module.model_type)
            state = load_weights(sub, meta.get("weights_sha256"))
        else:
            state = load_weights(sub, None)
        load_state_dict_strict(module, state, str(sub))
    state = load_state(directory)
    missing = sorted(set(optimizers) - set(state["optimizers"]))
    if missing:
        raise CheckpointError(f"{directory}: no optimizer state for {', '.join(missing)}")
    for name, optimizer in optimizers.items():
        try:
            optimizer.load_state_dict(state["optimizers"][name])
        except (ValueError, KeyError) as exc:
            raise CheckpointError(f"{directory}: optimizer {name!r} state: {exc}") from None
    if hasattr(task, "load_state_dict"):
        task.load_state_dict(state.get("task", {}))
    return state


def truncate_metrics(path: Path, step: int) -> None:
    """Drop log lines past the resumed step, and a line cut short by a crash."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError, KeyError, TypeError):
            if json.loads(line)["step"] <= step:
                kept.append(line)
    atomic_write_text(path, "".join(line + "\n" for line in kept))
