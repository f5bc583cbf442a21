"""Downstream protocol: folds, classifier, determinism, reports and the CLI at tiny size."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torchio as tio
from PIL import Image

from tumoraug.errors import ConfigError, DataError, TumorAugError
from tumoraug.evaluation import (
    ClassifierConfig,
    ProtocolConfig,
    ResNet3D,
    evaluate_samples,
    item_tensors,
    materialize,
    run_protocol,
    stratified_folds,
)


def _toy_items(n: int, seed: int, size: int = 16, signal: float = 0.8) -> list:
    """ROI-like (tensor, label) pairs: HGG items carry a bright cube in the centre."""
    generator = torch.Generator().manual_seed(seed)
    items = []
    for i in range(n):
        label = i % 2
        x = torch.rand(1, size, size, size, generator=generator) * 0.4 - 0.2
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


def test_classifier_shapes_and_presets():
    model = ResNet3D(ClassifierConfig(in_channels=2, base_width=4))
    x = torch.randn(3, 2, 32, 32, 32)
    assert model(x).shape == (3,)
    assert model.features(x).shape == (3, 32)
    assert ResNet3D(TINY)(torch.randn(2, 1, 16, 16, 16)).shape == (2,)
    with pytest.raises(ConfigError, match="base_width"):
        ClassifierConfig(base_width=0)
    with pytest.raises(ConfigError, match="conditions"):
        ProtocolConfig(conditions=("real", "gan"))


def test_item_tensors_reads_subjects_and_tuples():
    volume = torch.rand(1, 8, 8, 8)
    subject = tio.Subject(image=tio.ScalarImage(tensor=volume), label=1)
    image, label = item_tensors(subject)
    assert torch.equal(image, volume) and label == 1
    image, label = item_tensors((volume, "LGG"))
    assert torch.equal(image, volume) and label == 0
    with pytest.raises(DataError, match="cannot read"):
        item_tensors("scan.nii.gz")
    with pytest.raises(DataError, match="batch of 2"):
        item_tensors((torch.rand(2, 1, 8, 8, 8), 1))
    with pytest.raises(TumorAugError):
        item_tensors((volume, 3))


def test_materialize_keeps_order_and_labels():
    items = _toy_items(5, seed=0)
    cached = materialize(items)
    assert [label for _, label in cached] == [label for _, label in items]
    assert torch.equal(cached[2][0], items[2][0])


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


def test_sample_report_compares_models_with_real_rois(tiny_model_dir, tmp_path):
    from tumoraug.generator import TumorGenerator

    real = _toy_items(6, seed=3)
    model = TumorGenerator.from_pretrained(tiny_model_dir, device="cpu")
    report = evaluate_samples(
        real,
        {"tiny": model, "copy": RealCopier(real)},
        n_per_class=3,
        generate_kwargs={"steps": 2},
        montage_per_class=1,
    )
    assert [(r["model"], r["grade"]) for r in report.rows] == [
        ("tiny", "LGG"),
        ("copy", "LGG"),
        ("tiny", "HGG"),
        ("copy", "HGG"),
    ]
    by_model = {(r["model"], r["grade"]): r for r in report.rows}
    # A "model" that returns the real ROIs themselves has MMD 0 and the real diversity.
    assert by_model[("copy", "HGG")]["mmd"] == 0.0
    copy_row = by_model[("copy", "HGG")]
    assert copy_row["ms_ssim_generated"] == pytest.approx(copy_row["ms_ssim_real"])
    assert by_model[("tiny", "HGG")]["mmd"] > 0
    assert by_model[("tiny", "HGG")]["mmd_1e4"] == pytest.approx(
        by_model[("tiny", "HGG")]["mmd"] * 1e4
    )
    paths = report.save(tmp_path)
    assert paths["markdown"].read_text().startswith("| Model | Grade |")
    assert len(json.loads(paths["json"].read_text())["rows"]) == 4
    with Image.open(paths["montage"]) as png:
        assert png.size[1] > 6 * 16  # 2 real + 2 x 2 generated rows


class RealCopier:
    """A stand-in model whose 'samples' of a grade are the real ROIs of that grade."""

    roi_size = 16

    def __init__(self, items: list) -> None:
        self.items = items

    def generate(self, labels: list, seed: int = 0, **_: object) -> torch.Tensor:
        pool = [x for x, y in self.items if y == labels[0]]
        return torch.stack(pool[: len(labels)])


# ----------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def roi_cache(tmp_path_factory):
    """A 16³ ROI cache of 4 HGG + 4 LGG phantoms."""
    from tumoraug.data.cache import preprocess
    from tumoraug.data.phantom import write_phantom_dataset

    root = tmp_path_factory.mktemp("phantoms")
    write_phantom_dataset(root / "raw", per_class=4, seed=0, shape=(40, 40, 40))
    preprocess(root / "raw", root / "cache", size=16)
    return root / "cache"


TINY_CLI = ["--folds", "2", "--run-folds", "1", "--seeds", "0", "--epochs", "1", "--width", "4"]


def test_cli_evaluate_real_only_prints_the_table(roi_cache, tmp_path):
    from typer.testing import CliRunner

    from tumoraug.cli import app

    out = tmp_path / "report"
    result = CliRunner().invoke(
        app, ["evaluate", "--data", str(roi_cache), "--out", str(out), *TINY_CLI]
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "| Condition | AUC | F1 | Acc | Prec | Rec |"
    assert len(lines) == 3 and lines[2].startswith("| Real only |")
    assert lines[2].count("±") == 5
    assert (out / "results.md").read_text() == result.stdout
    data = json.loads((out / "results.json").read_text())
    assert data["n_real"] == 8 and len(data["runs"]) == 1
    assert len(data["runs"][0]["labels"]) == 4  # one fold of a 2-fold split of 8 subjects
    assert (out / "roc.png").stat().st_size > 0


def test_cli_evaluate_with_a_generator_model(roi_cache, tiny_model_dir, tmp_path):
    from typer.testing import CliRunner

    from tumoraug.cli import app

    args = ["evaluate", "--data", str(roi_cache), "--model", str(tiny_model_dir)]
    args += ["--conditions", "real,mixed,pretrain", "--pretrain-epochs", "1", "--ratio", "0.5"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path), *TINY_CLI])
    assert result.exit_code == 0, result.output
    rows = [line.split(" | ")[0] for line in result.stdout.strip().splitlines()[2:]]
    assert rows == [
        "| Real only",
        "| Real + synthetic (ratio 0.5)",
        "| Pre-train synthetic, fine-tune real",
    ]
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["n_synthetic"] == 4  # ratio 0.5 x 8 real ROIs, generated once


def test_cli_evaluate_rejects_two_synthetic_sources(roi_cache, tiny_model_dir):
    from typer.testing import CliRunner

    from tumoraug.cli import app

    args = ["evaluate", "--data", str(roi_cache), "--model", str(tiny_model_dir)]
    result = CliRunner().invoke(app, [*args, "--synthetic", str(roi_cache)])
    assert result.exit_code == 1
    assert "give one synthetic source" in result.output


def test_cli_evaluate_samples_side_by_side(roi_cache, tiny_model_dir, tmp_path):
    from typer.testing import CliRunner

    from tumoraug.cli import app

    args = ["evaluate-samples", "--data", str(roi_cache), "--n", "2", "--steps", "2"]
    args += ["--model", str(tiny_model_dir), "--model", str(tiny_model_dir)]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("| Model | Grade |") and len(lines) == 6
    assert "| tiny-generator | LGG |" in lines[2] and "| tiny-generator-1 | LGG |" in lines[3]
    assert (tmp_path / "samples_montage.png").stat().st_size > 0


def test_cli_evaluate_with_a_synthetic_bank(roi_cache, tiny_model_dir, tmp_path):
    from typer.testing import CliRunner

    from tumoraug.bank import SyntheticBank
    from tumoraug.cli import app

    bank = SyntheticBank.build(
        tiny_model_dir, 4, None, tmp_path / "bank.npy", steps=2, device="cpu"
    )
    args = ["evaluate", "--data", str(roi_cache), "--bank", str(bank.path)]
    result = CliRunner().invoke(
        app, [*args, "--conditions", "pretrain", "--out", str(tmp_path), *TINY_CLI]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[2].startswith("| Pre-train synthetic, fine-tune real |")
    assert json.loads((tmp_path / "results.json").read_text())["n_synthetic"] == 4
