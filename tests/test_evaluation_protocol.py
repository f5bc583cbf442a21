"""Downstream protocol: folds, conditions, determinism, summary statistics and its report."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from tumoraug.errors import ConfigError, DataError
from tumoraug.evaluation import ClassifierConfig, ProtocolConfig, run_protocol, stratified_folds
from tumoraug.evaluation.protocol import condition_title, dataset_labels, synthetic_subset


def _toy_items(n: int, seed: int, size: int = 16, signal: float = 0.8) -> list:
    """ROI-like (tensor, label) pairs: HGG items carry a bright cube in the centre."""
    rng = torch.Generator().manual_seed(seed)
    items = []
    for i in range(n):
        label = i % 2
        x = torch.rand(1, size, size, size, generator=rng) * 0.4 - 0.2
        if label:
            q = size // 4
            x[:, q:-q, q:-q, q:-q] += signal
        items.append((x.clamp(-1, 1), label))
    return items


TINY = ClassifierConfig.preset("tiny")


def test_stratified_folds_partition_and_balance():
    labels = [0] * 7 + [1] * 13
    splits = stratified_folds(labels, folds=3, seed=0)
    tests = [set(test) for _, test in splits]
    assert set().union(*tests) == set(range(20))
    assert sum(len(t) for t in tests) == 20
    for train, test in splits:
        assert not set(train) & set(test)
        assert sorted(train + test) == list(range(20))
        for cls, total in ((0, 7), (1, 13)):
            count = sum(labels[i] == cls for i in test)
            assert total // 3 <= count <= total // 3 + 1
    assert splits == stratified_folds(labels, folds=3, seed=0)
    assert splits != stratified_folds(labels, folds=3, seed=1)
    with pytest.raises(DataError, match="fewer than folds=3"):
        stratified_folds([0, 0, 1, 1, 1], folds=3)


def test_protocol_learns_an_easy_task_and_is_deterministic(tmp_path):
    real = _toy_items(16, seed=0)
    synthetic = _toy_items(8, seed=1)
    config = ProtocolConfig(
        folds=4, run_folds=1, seeds=(0,), epochs=4, pretrain_epochs=1, batch_size=4, lr=3e-3
    )
    first = run_protocol(real, synthetic, config=config, classifier=TINY)
    second = run_protocol(real, synthetic, config=config, classifier=TINY)
    assert [r["probs"] for r in first.runs] == [r["probs"] for r in second.runs]
    assert len(first.runs) == 3
    real_only = next(r for r in first.runs if r["condition"] == "real")
    assert real_only["metrics"]["auc"] == 1.0
    assert real_only["labels"] == [real[i][1] for i in real_only["test_indices"]]

    paths = first.save(tmp_path)
    table = paths["markdown"].read_text().splitlines()
    assert table[0] == "| Condition | AUC | F1 | Acc | Prec | Rec |"
    assert table[2].startswith("| Real only | 1.000 ± 0.000 |")
    assert "Real + synthetic (ratio 1)" in table[3]
    assert "Pre-train synthetic, fine-tune real" in table[4]
    data = json.loads(paths["json"].read_text())
    assert data["summary"]["real"]["auc"]["mean"] == 1.0
    assert data["protocol"]["folds"] == 4 and len(data["runs"]) == 3
    with Image.open(paths["roc"]) as png:
        assert png.size == (560, 560)
        # The curves are drawn in colour on a white and grey canvas.
        assert any(r != g or g != b for r, g, b in np.asarray(png).reshape(-1, 3)[::7])


def test_runs_depend_on_their_seed_only():
    real = _toy_items(8, seed=4)
    config = ProtocolConfig(conditions=("real",), folds=2, run_folds=1, seeds=(3,), epochs=2)
    noisy = ClassifierConfig.preset("tiny", dropout=0.5)
    first = run_protocol(real, config=config, classifier=noisy).runs[0]["probs"]
    torch.rand(100)  # moves the global RNG: the next run must not notice
    assert run_protocol(real, config=config, classifier=noisy).runs[0]["probs"] == first
    other = config.replace(seeds=(4,))
    assert run_protocol(real, config=other, classifier=noisy).runs[0]["probs"] != first


def test_protocol_summary_statistics_over_seeds():
    real = _toy_items(12, seed=2, signal=0.1)
    config = ProtocolConfig(
        conditions=("real",), folds=3, run_folds=2, seeds=(0, 1), epochs=1, batch_size=4
    )
    result = run_protocol(real, config=config, classifier=TINY)
    assert [(r["seed"], r["fold"]) for r in result.runs] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    accuracies = [r["metrics"]["accuracy"] for r in result.runs]
    summary = result.summary()["real"]["accuracy"]
    assert summary["n"] == 4
    assert summary["mean"] == pytest.approx(np.mean(accuracies))
    assert summary["std"] == pytest.approx(np.std(accuracies, ddof=1))


def test_protocol_checks_its_inputs():
    real = _toy_items(8, seed=0)
    with pytest.raises(DataError, match="need synthetic data"):
        run_protocol(real, config=ProtocolConfig(folds=2), classifier=TINY)
    with pytest.raises(DataError, match=r"synthetic ROIs have shape \(1, 8, 8, 8\)"):
        run_protocol(real, _toy_items(4, seed=1, size=8), config=ProtocolConfig(folds=2))
    with pytest.raises(DataError, match="in_channels=2"):
        run_protocol(
            real,
            config=ProtocolConfig(conditions=("real",), folds=2),
            classifier=TINY.replace(in_channels=2),
        )


def test_protocol_config_validates_conditions_and_folds():
    with pytest.raises(ConfigError, match="conditions"):
        ProtocolConfig(conditions=("real", "gan"))
    with pytest.raises(ConfigError, match="run_folds"):
        ProtocolConfig(folds=2, run_folds=3)
    assert not ProtocolConfig(conditions=("real",)).needs_synthetic
    assert ProtocolConfig().needs_synthetic
    assert condition_title("mixed", 0.5) == "Real + synthetic (ratio 0.5)"


def test_dataset_labels_and_synthetic_subset():
    items = _toy_items(5, seed=0)
    assert dataset_labels(items) == [0, 1, 0, 1, 0]
    subset = synthetic_subset(items, 12, seed=3)
    assert len(subset) == 12 and sorted(subset.indices[:5]) == list(range(5))
    assert subset.indices == synthetic_subset(items, 12, seed=3).indices
    with pytest.raises(DataError, match="empty"):
        synthetic_subset([], 2, seed=0)


def test_protocol_with_progress_bar_gives_the_same_runs(capsys):
    real = _toy_items(8, seed=5)
    config = ProtocolConfig(conditions=("real",), folds=2, run_folds=1, seeds=(0,), epochs=1)
    quiet = run_protocol(real, config=config, classifier=TINY)
    shown = run_protocol(real, config=config, classifier=TINY, progress=True)
    assert shown.runs == quiet.runs
    assert capsys.readouterr().out == ""  # the bar goes to stderr
