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


# --- arms: ratio sweep, balance, synthetic only, sources; pairing on identical trials ---


def _labels_of(dataset) -> list[int]:
    return [int(dataset[i][1]) for i in range(len(dataset))]


def _arm(condition, **kwargs):
    from tumoraug.evaluation import Arm

    return Arm(condition, condition, **kwargs)


def test_balance_adds_only_minority_synthetic_rois_until_the_grades_are_equal():
    from tumoraug.evaluation import training_stages
    from tumoraug.evaluation.splits import class_counts

    real, synthetic = _toy_items(24, seed=0), _toy_items(40, seed=1)
    train_idx = [i for i in range(24) if i % 2][:9] + [i for i in range(24) if not i % 2][:3]
    train = torch.utils.data.Subset(real, train_idx)  # 9 HGG : 3 LGG
    config = ProtocolConfig(conditions=("real", "balance"))
    for factor, added in ((1.0, 6), (0.5, 3)):
        arm = _arm("balance", source="s", balance_factor=factor)
        (stage,) = training_stages(
            arm, train, [real[i][1] for i in train_idx], synthetic, None, config=config, seed=0
        )
        dataset, epochs, _ = stage
        assert epochs == config.epochs and len(dataset) == 12 + added
        real_part, extra = dataset.datasets
        assert real_part is train
        assert set(_labels_of(extra)) == {0}  # synthetic LGG only
        images = [x for x, _ in synthetic]
        assert all(any(torch.equal(extra[i][0], x) for x in images) for i in range(len(extra)))
        if factor == 1.0:
            assert class_counts(_labels_of(dataset)) == [9, 9]


def test_synthetic_only_trains_on_synthetic_rois_alone_and_tests_on_real():
    from tumoraug.evaluation import training_stages

    real, synthetic = _toy_items(16, seed=0), _toy_items(30, seed=1)
    train = torch.utils.data.Subset(real, list(range(8)))
    config = ProtocolConfig(conditions=("synthetic_only",))
    arm = _arm("synthetic_only", ratio=2.5, source="s")
    (stage,) = training_stages(arm, train, [0, 1] * 4, synthetic, None, config=config, seed=3)
    dataset, epochs, _ = stage
    assert len(dataset) == 20 and epochs == config.epochs  # 2.5 x 8 real training ROIs
    real_images = [x for x, _ in real]
    assert not any(torch.equal(dataset[i][0], x) for i in range(20) for x in real_images)

    run = run_protocol(
        real, synthetic, classifier=TINY,
        config=config.replace(folds=2, run_folds=1, seeds=(0,), epochs=1, ratios=(2.0,)),
    ).runs[0]  # fmt: skip
    assert run["trained_on"]["real"] == [0, 0] and sum(run["trained_on"]["synthetic"]) == 16
    assert run["labels"] == [real[i][1] for i in run["test_indices"]]


def test_arms_are_paired_on_identical_trials_and_named_by_ratio_and_source(tmp_path):
    real = _toy_items(40, seed=0)
    sources = {"guidance 1": _toy_items(60, seed=1), "guidance 3": _toy_items(60, seed=2)}
    provenance = {name: {"kind": "model", "guidance": float(name.split()[1])} for name in sources}
    config = ProtocolConfig(
        conditions=("real", "mixed", "pretrain", "balance", "synthetic_only"),
        ratios=(1.0, 2.0), train_size=8, hgg_share=0.75, folds=5, run_folds=2, seeds=(0, 1),
        epochs=1, pretrain_epochs=1, batch_size=8,
    )  # fmt: skip
    result = run_protocol(real, sources, config=config, classifier=TINY, provenance=provenance)
    keys = [arm.key for arm in result.arms]
    assert len(keys) == 1 + 3 * 2 * 2 + 2 and len(set(keys)) == len(keys)
    assert "mixed ×2 @ guidance 3" in keys and "balance @ guidance 1" in keys
    names = [arm.name for arm in result.arms]
    assert "pretrain × ratio 1 × guidance 3" in names and "balance × guidance 1" in names
    assert {arm.guidance for arm in result.arms[1:]} == {1.0, 3.0}

    reference = {(r["repeat"], r["fold"], r["seed"]): r for r in result.runs if r["arm"] == "real"}
    assert len(reference) == 4
    for run in result.runs:
        twin = reference[(run["repeat"], run["fold"], run["seed"])]
        assert run["train_indices"] == twin["train_indices"]  # the same subsample
        assert run["test_indices"] == twin["test_indices"] and run["labels"] == twin["labels"]
        assert run["real_counts"] == [2, 6]
        used = run["trained_on"]
        expected_real = [0, 0] if run["condition"] == "synthetic_only" else [2, 6]
        assert used["real"] == expected_real
        if run["condition"] == "balance":
            assert used["synthetic"] == [4, 0]
        elif run["condition"] != "real":
            assert sum(used["synthetic"]) == 8 * run["ratio"]
    # The real-only runs do not depend on which other arms ran beside them.
    alone = run_protocol(real, config=config.replace(conditions=("real",)), classifier=TINY)
    assert [r["probs"] for r in alone.runs] == [r["probs"] for r in reference.values()]

    rows = result.comparisons()
    assert len(rows) == len(keys) - 1 and all(row["n"] == 4 for row in rows)
    paths = result.save(tmp_path)
    text = paths["markdown"].read_text()
    assert "| Real + synthetic (ratio 2, guidance 3) |" in text
    assert "| mixed × ratio 2 × guidance 3 | " in text and "two-sided Wilcoxon" in text
    assert "Real training ROIs per run: 8 (6 HGG, 2 LGG)" in text
    data = json.loads(paths["json"].read_text())
    assert data["sources"]["guidance 3"] == {"kind": "model", "guidance": 3.0, "n": 60}
    assert len(data["comparisons"]) == len(keys) - 1 and data["n_synthetic"] == 120
    assert data["protocol"]["ratios"] == [1.0, 2.0]


def test_fifteen_paired_runs_per_arm():
    real, synthetic = _toy_items(20, seed=0), _toy_items(20, seed=1)
    config = ProtocolConfig(
        conditions=("real", "mixed"), folds=5, seeds=(0, 1, 2), epochs=1, batch_size=16
    )
    result = run_protocol(real, synthetic, config=config, classifier=TINY)
    assert [len(result.arm_runs(arm)) for arm in result.arms] == [15, 15]
    (row,) = result.comparisons()
    assert row["n"] == 15 and row["wins"] + row["ties"] + row["losses"] == 15
    assert result.summary()["mixed"]["auc"]["n"] == 15


def test_new_protocol_settings_are_validated_and_size_the_synthetic_demand():
    from tumoraug.evaluation import synthetic_demand

    with pytest.raises(ConfigError, match="ratios"):
        ProtocolConfig(ratios=(1.0, 0.0))
    with pytest.raises(ConfigError, match="hgg_share"):
        ProtocolConfig(hgg_share=1.0)
    with pytest.raises(ConfigError, match="train_size"):
        ProtocolConfig(train_size=1)
    with pytest.raises(ConfigError, match="no condition twice"):
        ProtocolConfig(conditions=("real", "real"))
    assert ProtocolConfig(ratio=0.5).ratio_values == (0.5,)
    assert ProtocolConfig(ratio=0.5, ratios=(1, 5)).ratio_values == (1.0, 5.0)
    labels = [i % 2 for i in range(100)]
    sweep = ProtocolConfig(ratios=(1.0, 5.0, 20.0), train_size=24, hgg_share=0.75)
    assert synthetic_demand(labels, sweep) == 480  # 20 x 24
    assert synthetic_demand(labels, ProtocolConfig()) == 80  # 1 x 80 (5 folds of 100)
    balance = sweep.replace(conditions=("real", "balance"))
    assert synthetic_demand(labels, balance, hgg_share=0.5) == 24  # 12 LGG at half LGG
    assert synthetic_demand(labels, ProtocolConfig(conditions=("real",))) == 0
