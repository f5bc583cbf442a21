"""Publishing on the Hub (`tumoraug.hub`, ``tumoraug push``), without network: dry-run
plans, the model card, an upload into a local stand-in of the Hub, and clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from huggingface_hub import ModelCard
from typer.testing import CliRunner

from cli_checks import failed_cleanly, tree
from tumoraug.cli import app
from tumoraug.errors import CheckpointError, ConfigError
from tumoraug.generator import TumorGenerator
from tumoraug.hub import push_to_hub

MODEL_FILES = {
    "tumoraug.json",
    "tokenizer/config.json",
    "tokenizer/model.safetensors",
    "transformer/config.json",
    "transformer/model.safetensors",
}


@pytest.fixture
def run_dir(tmp_path, tiny_model_dir):
    """A stage-2 training folder: the model plus what training and evaluation leave beside it."""
    run = tmp_path / "run"
    shutil.copytree(tiny_model_dir, run)
    step = run / "checkpoints" / "step_00000010"
    step.mkdir(parents=True)
    (step / "run.json").write_text(json.dumps({"train": {"batch_size": 4, "lr": 0.001}}))
    (step / "training_state.json").write_text("{}")
    (step / "training_state.safetensors").write_bytes(b"optimizer state")
    (run / "metrics.jsonl").write_text(
        '{"step": 5, "accuracy": 0.1}\n{"step": 10, "accuracy": 0.25}\n'
    )
    (run / "corpus.safetensors").write_bytes(b"token corpus of the training data")
    (run / "samples").mkdir()
    (run / "samples" / "step_00000010.png").write_bytes(b"png")
    (run / "results.md").write_text(
        "| Condition | AUC |\n|---|---|\n| Real only | 0.613 ± 0.138 |\n"
    )
    (run / "preview.png").write_bytes(b"png")
    (run / ".tumoraug.lock").write_text("{}")
    return run


class LocalHub:
    """A stand-in for `huggingface_hub.HfApi`: commits are copied into ``root/OWNER/NAME``."""

    def __init__(self, root: Path, fail: bool = False):
        self.root, self.fail, self.created = root, fail, {}

    def create_repo(self, repo_id, *, private=None, exist_ok=False, repo_type=None):
        self.created[repo_id] = {"private": private, "exist_ok": exist_ok, "type": repo_type}

    def create_commit(self, repo_id, operations, *, commit_message, repo_type=None):
        if self.fail:
            raise OSError("connection refused")
        for op in operations:
            target = self.root / repo_id / op.path_in_repo
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(op.path_or_fileobj, target)
        return SimpleNamespace(commit_url=f"https://hub.test/{repo_id}/commit/1")


def test_dry_run_plans_the_model_and_reports_only(run_dir):
    before = tree(run_dir)
    plan = push_to_hub(run_dir, "me/tiny", dry_run=True)
    assert set(plan.files) == MODEL_FILES | {"README.md", "results.md", "preview.png"}
    assert set(plan.left_out) == {"checkpoints/", "metrics.jsonl", "corpus.safetensors", "samples/"}
    assert plan.files["tokenizer/model.safetensors"] == (
        (run_dir / "tokenizer/model.safetensors").stat().st_size
    )
    assert plan.files["README.md"] == len(plan.card.encode()) and plan.card_changed
    assert tree(run_dir) == before  # a dry run writes nothing
    text = plan.describe()
    assert "transformer/model.safetensors" in text and "checkpoints/: training checkpoints" in text


def test_card_front_matter_and_facts_come_from_the_folder(run_dir):
    row = {
        "model": "tiny", "grade": "HGG", "n_real": 3, "n_generated": 4, "mmd_1e4": 363.4,
        "ms_ssim_generated": 0.38, "ms_ssim_real": 0.18, "stats_within_tolerance": True,
        "stats_relative_difference": {
            "mean_intensity": -0.05, "hyperintense_share": -0.09, "core_share": -0.01
        },
    }  # fmt: skip
    (run_dir / "samples.json").write_text(json.dumps({"settings": {}, "rows": [row]}))
    card = push_to_hub(run_dir, "me/tiny", dry_run=True, license="apache-2.0").card
    meta = ModelCard(card).data.to_dict()
    assert meta["library_name"] == "tumoraug" and meta["license"] == "apache-2.0"
    assert {"medical-imaging", "3d", "brain-tumor", "data-augmentation"} <= set(meta["tags"])
    assert "16³ ROIs, 1 channel(s) (flair)" in card and "4×4×4 token grid, 64 codes" in card
    assert "M parameters" in card and "10 steps" in card and "batch_size 4" in card
    assert "| tiny | HGG | 3 / 4 | 363.40 |" in card
    assert "| accuracy | 0.25 |" in card and "| Real only | 0.613 ± 0.138 |" in card
    assert 'TumorGenerator.from_pretrained("me/tiny")' in card


def test_upload_reaches_the_hub_and_the_pushed_copy_generates_the_same(
    run_dir, tmp_path, hub_cache
):
    hub = LocalHub(tmp_path / "hub")
    plan = push_to_hub(run_dir, "me/tiny", private=True, api=hub)
    assert hub.created == {"me/tiny": {"private": True, "exist_ok": True, "type": "model"}}
    assert plan.commit_url == "https://hub.test/me/tiny/commit/1"
    pushed = hub.root / "me" / "tiny"
    assert {p.relative_to(pushed).as_posix() for p in pushed.rglob("*") if p.is_file()} == set(
        plan.files
    )
    assert (run_dir / "README.md").read_text() == (pushed / "README.md").read_text() == plan.card
    hub_cache(pushed, "me/tiny")  # what a download of the repo leaves in the HF cache
    original = TumorGenerator.from_pretrained(run_dir, device="cpu")
    for copy in (pushed, "me/tiny"):
        same = TumorGenerator.from_pretrained(copy, device="cpu")
        assert torch.equal(same.generate("HGG", seed=3), original.generate("HGG", seed=3))
    assert not push_to_hub(run_dir, "me/tiny", dry_run=True).card_changed  # refresh is stable


def test_a_hand_written_card_is_kept_and_given_the_missing_metadata(run_dir):
    (run_dir / "README.md").write_text("# My model\n\nTrained on our own scans.\n")
    card = push_to_hub(run_dir, "me/tiny", dry_run=True).card
    assert card.endswith("# My model\n\nTrained on our own scans.\n")
    assert ModelCard(card).data.library_name == "tumoraug"
    (run_dir / "README.md").write_text(card)
    assert not push_to_hub(run_dir, "me/tiny", dry_run=True).card_changed


@pytest.mark.parametrize("repo_id", ["tiny", "me/tiny/x", "me/bad name", "me/x--y", "/tiny"])
def test_a_bad_repo_id_is_refused(run_dir, repo_id):
    with pytest.raises(ConfigError, match="expected OWNER/NAME"):
        push_to_hub(run_dir, repo_id, dry_run=True)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda d: (d / "transformer/model.safetensors").unlink(), "transformer/model.safetensors"),
        (lambda d: (d / "tumoraug.json").unlink(), "tumoraug.json"),
        (lambda d: (d / "checkpoints/optimizer.pt").write_bytes(b"pickle"), "optimizer.pt"),
        (lambda d: shutil.rmtree(d), "no such model folder"),
        (lambda d: (d / "README.md").write_text("---\nfoo: [bar\n---\n# x\n"), "README.md"),
    ],
)
def test_a_broken_folder_is_refused_naming_the_file(run_dir, change, named):
    change(run_dir)
    with pytest.raises(CheckpointError, match=named):
        push_to_hub(run_dir, "me/tiny", api=LocalHub(run_dir.parent / "hub"))


def test_upload_failures_are_clear(run_dir, tmp_path, monkeypatch):
    from huggingface_hub import constants

    with pytest.raises(CheckpointError, match=r"upload to the Hub failed.*connection refused"):
        push_to_hub(run_dir, "me/tiny", api=LocalHub(tmp_path / "hub", fail=True))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(CheckpointError, match="HF_HUB_OFFLINE is set"):
        push_to_hub(run_dir, "me/tiny")


def test_cli_dry_run_prints_the_plan_and_the_card(run_dir):
    result = CliRunner().invoke(app, ["push", str(run_dir), "me/tiny", "--dry-run"])
    assert result.exit_code == 0, result.output
    for phrase in ("tokenizer/model.safetensors", "left out:", "corpus.safetensors", "---"):
        assert phrase in result.output
    assert "library_name: tumoraug" in result.output and not (run_dir / "README.md").exists()
    failed_cleanly(CliRunner().invoke(app, ["push", str(run_dir), "tiny"]), "OWNER/NAME")
