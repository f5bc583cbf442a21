"""benchmarks/bench_memory.py: one step of each stage at 16³, and the batch-fit arithmetic."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_memory.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_memory", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through it
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


@pytest.mark.parametrize("stage", ["tokenizer", "transformer"])
def test_measure_one_step_at_16(bench, stage):
    spec = bench.Spec(stage, "tiny", 16, 2, bf16=True, ckpt=stage == "tokenizer")
    row = bench.measure(spec, 1, torch.device("cpu"))
    assert row["params"] > 0
    assert row["peak_gib"] >= row["idle_gib"] > 0
    assert row["step_gib"] == pytest.approx(row["peak_gib"] - row["idle_gib"])
    assert bench.spec_of(row) == spec


def _row(bench, size, batch, step_gib, params=1000):
    spec = bench.Spec("tokenizer", "brats128", size, batch, bf16=False, ckpt=False)
    return {**bench.dataclasses.asdict(spec), "params": params, "step_gib": step_gib}


def test_fit_table_slope_and_extrapolation(bench):
    rows = [
        _row(bench, 64, 1, 1.5),
        _row(bench, 64, 2, 2.5),  # fixed 0.5 GiB, 1 GiB per sample
        _row(bench, 128, 1, 8.5),  # no batch 2: 0.5 fixed from 64³, 8 GiB per sample
        {**_row(bench, 128, 2, 0.0), "error": "skipped"},
    ]
    assert bench.fixed_and_slope(rows[:2]) == pytest.approx((0.5, 1.0))
    args = argparse.Namespace(gpu_gib=[24, 80], context_gib=1.0, margin=0.1)
    table = {row["ROI"]: row for row in bench.fit_table(rows, args)}
    # (0.9 * 24 - 1 - 0.5) / 1 = 20.1 samples; (0.9 * 80 - 1 - 0.5) / 8 = 8.8
    assert (table["64³"]["24 GB"], table["64³"]["80 GB"]) == ("20", "70")
    assert (table["128³"]["24 GB"], table["128³"]["80 GB"]) == ("≈ 2", "≈ 8")
    assert table["128³"]["GiB / sample"] == "≈ 8.00"
    # no slope resolved: a lower bound from 0.01 GiB per sample, just under (21.6 - 1.2) / 0.01
    flat = bench.fit_table([_row(bench, 32, 1, 0.2), _row(bench, 32, 2, 0.2)], args)
    assert (flat[0]["GiB / sample"], flat[0]["24 GB"]) == ("< 0.01", "> 2039")


def test_transformer_rows_have_no_checkpointing(bench):
    args = argparse.Namespace(
        stages=["tokenizer", "transformer"], presets=["brats128"], sizes=[32],
        precisions=["fp32"], checkpointing=["no", "yes"], batch_sizes=[2, 1],
    )  # fmt: skip
    specs = bench.specs(args)
    assert [(s.stage, s.ckpt, s.batch) for s in specs] == [
        ("tokenizer", False, 1), ("tokenizer", False, 2),
        ("tokenizer", True, 1), ("tokenizer", True, 2),
        ("transformer", False, 1), ("transformer", False, 2),
    ]  # fmt: skip
