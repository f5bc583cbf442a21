"""`tumoraug evaluate` and `tumoraug evaluate-samples` end to end at tiny size."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from extras import require_extra
from tumoraug.cli import app

TINY_CLI = ["--folds", "2", "--run-folds", "1", "--seeds", "0", "--epochs", "1", "--width", "4"]


@pytest.fixture(scope="module")
def eval_cache(tmp_path_factory):
    """A 16³ ROI cache of 4 HGG + 4 LGG phantoms."""
    from tumoraug.data.cache import preprocess
    from tumoraug.data.phantom import write_phantom_dataset

    root = tmp_path_factory.mktemp("phantoms")
    write_phantom_dataset(root / "raw", per_class=4, seed=0, shape=(40, 40, 40))
    preprocess(root / "raw", root / "cache", size=16)
    return root / "cache"


def test_cli_evaluate_real_only_prints_the_table(eval_cache, tmp_path):
    out = tmp_path / "report"
    result = CliRunner().invoke(
        app, ["evaluate", "--data", str(eval_cache), "--out", str(out), *TINY_CLI]
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


def test_cli_evaluate_with_a_monai_classifier(eval_cache, tmp_path):
    require_extra("monai")
    args = ["evaluate", "--data", str(eval_cache), "--classifier", "resnet10"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path), *TINY_CLI])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["classifier"]["network"] == "resnet10" and len(data["runs"]) == 1
    bad = CliRunner().invoke(app, [*args[:3], "--classifier", "vgg", "--out", str(tmp_path)])
    assert bad.exit_code != 0 and "network" in bad.output and "Traceback" not in bad.output


def test_cli_evaluate_with_a_generator_model(eval_cache, tiny_model_dir, tmp_path):
    args = ["evaluate", "--data", str(eval_cache), "--model", str(tiny_model_dir)]
    args += ["--conditions", "real,mixed,pretrain", "--pretrain-epochs", "1", "--ratio", "0.5"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path), *TINY_CLI])
    assert result.exit_code == 0, result.output
    table, paired = result.stdout.split("\n\n")[:2]
    rows = [line.split(" | ")[0] for line in table.splitlines()[2:]]
    assert rows == [
        "| Real only",
        "| Real + synthetic (ratio 0.5)",
        "| Pre-train synthetic, fine-tune real",
    ]
    assert paired.startswith("Paired with real only")
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["n_synthetic"] == 2  # ratio 0.5 x 4 real training ROIs, generated once
    assert data["sources"]["guidance 1.5"]["model"] == str(tiny_model_dir)


def test_cli_evaluate_sweeps_ratios_and_guidance_in_a_low_data_regime(
    eval_cache, tiny_model_dir, tmp_path
):
    args = ["evaluate", "--data", str(eval_cache), "--model", str(tiny_model_dir), "--steps", "2"]
    args += ["--conditions", "real,balance,synthetic_only", "--ratios", "0.5,1"]
    args += ["--guidance-values", "1,3", "--train-size", "3", "--hgg-share", "0.67"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path), *TINY_CLI])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["protocol"]["ratios"] == [0.5, 1.0] and data["protocol"]["train_size"] == 3
    assert list(data["sources"]) == ["guidance 1", "guidance 3"]
    assert len(data["arms"]) == 1 + 2 * (1 + 2) and len(data["comparisons"]) == 6
    for run in data["runs"]:
        assert run["real_counts"] == [1, 2]  # 2 HGG : 1 LGG, of a 2 + 2 training fold
        assert len(run["test_indices"]) == 4  # the test fold is whole
    assert "| balance × guidance 3 |" in result.stdout
    assert "| synthetic_only × ratio 0.5 × guidance 1 |" in result.stdout
    bad = CliRunner().invoke(app, [*args[:5], "--ratios", "1,x", "--out", str(tmp_path)])
    assert bad.exit_code == 1 and "--ratios: expected comma-separated numbers" in bad.output


def test_cli_evaluate_rejects_two_synthetic_sources(eval_cache, tiny_model_dir):
    args = ["evaluate", "--data", str(eval_cache), "--model", str(tiny_model_dir)]
    result = CliRunner().invoke(app, [*args, "--synthetic", str(eval_cache)])
    assert result.exit_code == 1
    assert "give one synthetic source" in result.output


def test_cli_evaluate_samples_side_by_side(eval_cache, tiny_model_dir, tmp_path):
    args = ["evaluate-samples", "--data", str(eval_cache), "--n", "2", "--steps", "2"]
    args += ["--model", str(tiny_model_dir), "--model", str(tiny_model_dir)]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("| Model | Grade |") and len(lines) == 6
    assert "| tiny-generator | LGG |" in lines[2] and "| tiny-generator-1 | LGG |" in lines[3]
    assert (tmp_path / "samples_montage.png").stat().st_size > 0
    settings = json.loads((tmp_path / "samples.json").read_text())["settings"]
    assert settings["sampling"]["steps"] == 2


def test_cli_evaluate_with_a_synthetic_bank(eval_cache, tiny_model_dir, tmp_path):
    from tumoraug.augment import SyntheticBank
    from tumoraug.sampling import SamplingConfig

    bank = SyntheticBank.build(
        tiny_model_dir, 4, None, tmp_path / "bank.npy", sampling=SamplingConfig(steps=2),
        device="cpu",
    )  # fmt: skip
    args = ["evaluate", "--data", str(eval_cache), "--bank", str(bank.path)]
    result = CliRunner().invoke(
        app, [*args, "--conditions", "pretrain", "--out", str(tmp_path), *TINY_CLI]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[2].startswith("| Pre-train synthetic, fine-tune real |")
    assert json.loads((tmp_path / "results.json").read_text())["n_synthetic"] == 4
