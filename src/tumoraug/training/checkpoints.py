"""The checkpoint folders of a training run: atomic writes, exact reloads, the metrics log.

Layout and guarantees: see `tumoraug.training.loop`. A checkpoint folder is complete or
absent: it is written under a temporary name and renamed into place.

Every checkpoint also holds ``run.json``, the *run record*: what decides the result of the
run (the task's configs, the `TrainConfig` fields in `RESULT_FIELDS`, and fingerprints of
the data and, for stage 2, of the tokenizer). `check_resume` refuses to continue a run with
a record that differs, naming each difference; only ``steps`` may grow.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Any

import torch
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
from tumoraug.errors import CheckpointError, ConfigError
from tumoraug.training.config import TrainConfig

CHECKPOINT_DIR = "checkpoints"
METRICS_NAME = "metrics.jsonl"
RUN_NAME = "run.json"
RESULT_FIELDS = (
    "batch_size", "grad_accum_steps", "lr", "warmup_steps", "max_grad_norm", "seed",
    "mixed_precision", "lr_schedule", "min_lr_ratio", "cpu_bf16",
)  # fmt: skip
"""The `TrainConfig` fields that change what a run computes (``steps`` only says how long)."""
ADDED_LATER = {
    "train.lr_schedule": "constant", "train.min_lr_ratio": 0.1, "train.cpu_bf16": False,
}  # fmt: skip
"""Run-record entries that older records lack, with the value those runs trained with."""
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


def fingerprint(data: Any) -> str:
    """SHA-256 of JSON-compatible ``data`` (key order does not matter)."""
    text = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def data_fingerprint(data: Any) -> str | None:
    """A SHA-256 naming the items of a training set, or None when it cannot be told.

    A ROI cache (a dataset with a ``manifest``) is named by its subjects, labels, shapes and
    file hashes, so that moving or re-listing the cache does not change it; a token corpus
    by its tensors.
    """
    manifest = getattr(data, "manifest", None)
    if isinstance(manifest, dict):
        subjects = manifest.get("subjects")
        if isinstance(subjects, list):
            keys = ("subject", "label", "shape", "sha256")
            return fingerprint([{k: e.get(k) for k in keys} for e in subjects])
        return fingerprint(manifest)
    tensors = [getattr(data, name, None) for name in ("tokens", "importance", "labels")]
    if all(isinstance(t, torch.Tensor) for t in tensors):
        digest = hashlib.sha256()
        for tensor in tensors:
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()
    return None


def run_record(
    task: Any | None, train: TrainConfig, identity: dict[str, Any] | None
) -> dict[str, Any]:
    """The run record of ``task`` trained with ``train`` (see the module docstring).

    ``identity`` adds what the task's configs do not say, e.g. ``{"data": ..., "tokenizer":
    ...}`` fingerprints; ``task=None`` leaves the task's configs out (a partial record, to
    check a resume before the task exists). Values are JSON round-tripped, as they are read
    back on resume.
    """
    record = {
        **(task.describe() if hasattr(task, "describe") else {}),
        "train": {field: getattr(train, field) for field in RESULT_FIELDS},
        **(identity or {}),
    }
    return json.loads(json.dumps(record))


def _flat(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _shown(value: Any) -> str:
    """A record value for a message: hashes shortened to 12 hex digits."""
    if isinstance(value, str) and re.fullmatch(r"[0-9a-f]{64}", value):
        return value[:12]
    return repr(value)


def check_resume(
    output_dir: Path,
    record: dict[str, Any],
    train: TrainConfig,
    resume: bool,
    *,
    partial: bool = False,
) -> Path | None:
    """The checkpoint a run continues from (None: a fresh start), once it is safe to.

    Refuses (`ConfigError`, before anything is loaded or written) a resume whose run record
    differs from the checkpoint's, naming each difference; a resume to fewer ``steps``
    than were done; and ``steps=0`` on a fresh start, which would save an untrained model.
    ``partial``: compare only the top-level entries that ``record`` has.
    """
    latest = latest_checkpoint(output_dir) if resume else None
    if latest is None:
        if train.steps == 0:
            raise ConfigError(
                f"{output_dir}: steps=0 on a fresh run (no checkpoint to continue) would save "
                "a randomly initialised model as if trained; give steps >= 1 (CLI: --steps)"
            )
        return None
    path = latest / RUN_NAME
    try:
        saved = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(
            f"{path}: missing; the checkpoint does not say what the run was started with "
            "(an older tumoraug wrote it), so it cannot be resumed safely: train into a new "
            "folder, or start afresh with resume=False (CLI: --no-resume)"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: unreadable run record ({exc})") from None
    if not isinstance(saved, dict):
        raise CheckpointError(f"{path}: not a run record (expected a JSON object)")
    if partial:
        saved = {key: saved.get(key) for key in record}
    before, now = {**ADDED_LATER, **_flat(saved)}, _flat(record)
    diffs = [
        f"{key} was {_shown(before.get(key))}, now {_shown(now.get(key))}"
        for key in dict.fromkeys([*before, *now])
        if before.get(key) != now.get(key)
    ]
    if diffs:
        raise ConfigError(
            f"{output_dir}: cannot resume {latest.name} with other settings than the run was "
            f"started with: {'; '.join(diffs)}; resume with the same settings (only steps may "
            "grow), or train into a new folder"
        )
    done = int(_STEP_DIR.match(latest.name).group(1))  # type: ignore[union-attr]
    if done > train.steps:
        raise ConfigError(
            f"{output_dir}: the run has done {done} steps, more than steps={train.steps}; give "
            f"steps >= {done} (CLI: --steps) to resume it, or train into a new folder"
        )
    return latest


def first_non_finite(raw: dict[str, nn.Module]) -> str | None:
    """The name (``module.tensor``) of the first weight or buffer holding NaN or Inf."""
    for name, module in raw.items():
        for key, tensor in module.state_dict().items():
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                return f"{name}.{key}"
    return None


def save_checkpoint(
    output_dir: Path,
    step: int,
    raw: dict[str, nn.Module],
    optimizers: dict[str, Any],
    task: Any,
    rngs: list[dict[str, Any]],
    train: TrainConfig,
    record: dict[str, Any],
) -> Path:
    """Write checkpoint ``step`` and its run ``record`` atomically (temp folder, then rename);
    keep the newest few."""
    root = output_dir / CHECKPOINT_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp_step_{step:08d}_{secrets.token_hex(4)}"
    tmp.mkdir(mode=0o777)  # the umask applies, as for a plain mkdir: colleagues can enter
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
        atomic_write_text(tmp / RUN_NAME, json.dumps(record, indent=2, allow_nan=False) + "\n")
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
