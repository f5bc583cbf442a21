"""The examples run end to end at small size (embedded demo model, phantom ROIs)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from extras import require_extra

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(name: str, *args: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_mix_into_dataloader():
    out = run_example("mix_into_dataloader.py", "--epochs", "1", "--workers", "2")
    assert "epoch 0: 24 items, 12 synthetic (50%)" in out
    assert "(tensor, label) dataset: batch (4, 1, 32, 32, 32)" in out


def test_torchio_pipeline():
    out = run_example("torchio_pipeline.py", "--workers", "0")
    assert "subjects got a synthetic ROI" in out
    assert "history replay reproduces the augmented image: True" in out


def test_monai_pipeline():
    require_extra("monai")
    out = run_example("monai_pipeline.py", "--workers", "0")
    assert "6 real ROIs, bank of 4 synthetic ROIs (1, 32, 32, 32)" in out
    assert "items replaced by a synthetic ROI (prob=0.5)" in out
    assert "batch: image (4, 1, 32, 32, 32) (MetaTensor)" in out
    assert "set_determinism reproduces the epoch: True" in out
    assert "set_random_state reproduces the replaced image: True" in out
    assert "the replaced image keeps its affine: True" in out
    assert "synthetic dicts: batch (4, 1, 32, 32, 32)" in out


def test_pretrain_on_synthetic():
    out = run_example(
        "pretrain_on_synthetic.py",
        *("--bank-size", "16", "--synthetic-epochs", "1", "--real-epochs", "1"),
        *("--workers", "0"),
    )
    assert "bank: 16 ROIs of (1, 32, 32, 32) (int16)" in out
    for name in ("real only", "synthetic then real"):
        auc = float(out.split(f"{name}: ")[-1].split()[0])
        assert 0.0 <= auc <= 1.0


def test_data_pipeline():
    assert run_example("data_pipeline.py", "--size", "16").strip()
