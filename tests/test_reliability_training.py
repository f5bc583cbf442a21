"""Reliability catalogue, training runs (issue 11): diverging runs, resumes that must not
trust anything, runs that cannot work. One test per failure, named after it, asserting a
one-line error naming the option or file, exit code 1 without a traceback, and the files on
disk unchanged (or the documented outcome: the last good checkpoint kept)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cli_checks import failed_cleanly, tree
from tumoraug.checkpoint import load_weights
from tumoraug.cli import app
from tumoraug.config import TokenizerConfig
from tumoraug.errors import ConfigError
from tumoraug.training.checkpoints import RUN_NAME, latest_checkpoint
from tumoraug.training.config import TrainConfig
from tumoraug.training.loop import TrainingTask, fit

runner = CliRunner()
TINY = ["--preset", "tiny", "--batch-size", "2", "--device", "cpu"]


def train_tokenizer(cache: Path, out: Path, *args: str):
    return runner.invoke(
        app, ["train-tokenizer", str(cache), str(out), *TINY, "--roi-size", "16", *args]
    )


def train_transformer(cache: Path, tokenizer: Path, out: Path, *args: str):
    return runner.invoke(
        app, ["train-transformer", "--data", str(cache), "--tokenizer", str(tokenizer),
              "--out", str(out), *TINY, *args],
    )  # fmt: skip


def all_finite(checkpoint: Path, module: str) -> bool:
    state = load_weights(checkpoint / module, None)
    return all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point())


@pytest.fixture(scope="module")
def tokenizers(roi_cache, tmp_path_factory):
    """Two different one-step 16³ tokenizers (seeds 0 and 1) trained on `roi_cache`."""
    root = tmp_path_factory.mktemp("tokenizers")
    for seed in ("0", "1"):
        result = train_tokenizer(roi_cache, root / seed, "--steps", "1", "--seed", seed)
        assert result.exit_code == 0, result.output
    return root / "0" / "tokenizer", root / "1" / "tokenizer"


@pytest.fixture(scope="module")
def tokenizer_run(roi_cache, tmp_path_factory):
    """A finished two-step tokenizer run (batch 2, default lr), to resume from."""
    out = tmp_path_factory.mktemp("tokenizer-run") / "run"
    assert train_tokenizer(roi_cache, out, "--steps", "2").exit_code == 0
    return out


@pytest.fixture(scope="module")
def transformer_run(roi_cache, tokenizers, tmp_path_factory):
    """A finished two-step transformer run on the first tokenizer's tokens."""
    out = tmp_path_factory.mktemp("transformer-run") / "run"
    assert train_transformer(roi_cache, tokenizers[0], out, "--steps", "2").exit_code == 0
    return out


def copy(folder: Path, to: Path) -> Path:
    shutil.copytree(folder, to)
    return to


# -- silent NaN -----------------------------------------------------------------------------


def test_train_tokenizer_lr_1e12_stops_at_the_first_non_finite_loss(roi_cache, tmp_path):
    out = tmp_path / "run"
    result = train_tokenizer(roi_cache, out, "--steps", "6", "--checkpoint-every", "1",
                             "--lr", "1e12")  # fmt: skip
    failed_cleanly(
        result, "training stopped at step 2", "loss/tokenizer is NaN or infinite",
        "the last good checkpoint is", "step_00000001", "lr=1e+12, CLI: --lr",
    )  # fmt: skip
    assert latest_checkpoint(out).name == "step_00000001"
    assert all_finite(latest_checkpoint(out), "tokenizer")
    assert not (out / "tokenizer").exists()  # no model exported as if trained


def test_train_transformer_lr_1e12_stops_at_the_first_non_finite_loss(
    roi_cache, tokenizers, tmp_path
):
    out = tmp_path / "run"
    result = train_transformer(roi_cache, tokenizers[0], out, "--steps", "6",
                               "--checkpoint-every", "1", "--lr", "1e12")  # fmt: skip
    failed_cleanly(result, "training stopped at step 2", "loss/transformer is NaN or infinite",
                   "step_00000001")  # fmt: skip
    assert latest_checkpoint(out).name == "step_00000001"
    assert all_finite(latest_checkpoint(out), "transformer")
    assert not (out / "transformer").exists() and not (out / "tumoraug.json").exists()


class Scalar(TrainingTask):
    """One weight; its loss turns NaN at ``nan_loss_at`` or its weight at ``nan_weight_at``."""

    def __init__(self, nan_loss_at=None, nan_weight_at=None):
        self.w = torch.nn.Linear(1, 1)
        self.nan_loss_at, self.nan_weight_at = nan_loss_at, nan_weight_at

    def modules(self):
        return {"w": self.w}

    def configure_optimizers(self, modules):
        return {"w": torch.optim.SGD(self.w.parameters(), lr=0.1)}

    def training_step(self, batch, ctx):
        loss = self.w(batch[:, None]).pow(2).mean()
        return loss * math.nan if ctx.step + 1 == self.nan_loss_at else loss

    def after_step(self, ctx):
        if ctx.step + 1 == self.nan_weight_at:
            with torch.no_grad():
                self.w.weight.fill_(math.inf)
        return {}


def scalar_fit(task, out, **options):
    train = TrainConfig(**{"steps": 6, "batch_size": 2, "device": "cpu", **options})
    return fit(task, torch.arange(8.0), out, train, progress=False)


def test_fit_stops_at_a_nan_loss_before_its_optimizer_step(tmp_path):
    task = Scalar(nan_loss_at=3)
    with pytest.raises(ConfigError, match=r"stopped at step 3: loss/w is NaN or infinite; "
                                          r"nothing of this step was saved and the last good "
                                          r"checkpoint is .*step_00000002"):  # fmt: skip
        scalar_fit(task, tmp_path, checkpoint_every=2, log_every=1)
    assert torch.isfinite(task.w.weight).all()  # the NaN gradient was never applied
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").open()]
    assert steps == [1, 2]


def test_fit_never_checkpoints_non_finite_weights(tmp_path):
    with pytest.raises(ConfigError, match=r"stopped at step 4: weight w\.weight is NaN or "
                                          r"infinite"):  # fmt: skip
        scalar_fit(Scalar(nan_weight_at=4), tmp_path, checkpoint_every=2)
    assert latest_checkpoint(tmp_path).name == "step_00000002"
    assert all_finite(latest_checkpoint(tmp_path), "w")


# -- resume that trusts anything ------------------------------------------------------------


def test_resume_with_another_batch_size_or_lr_is_refused_naming_each(
    roi_cache, tokenizer_run, tmp_path
):
    out = copy(tokenizer_run, tmp_path / "run")
    before = tree(out)
    result = train_tokenizer(roi_cache, out, "--steps", "3", "--batch-size", "1", "--lr", "1e-3")
    failed_cleanly(result, "cannot resume step_00000002 with other settings",
                   "train.batch_size was 2, now 1", "train.lr was 0.0001, now 0.001",
                   "only steps may grow")  # fmt: skip
    assert tree(out) == before


def test_resume_with_another_config_is_refused_naming_the_field(roi_cache, tokenizer_run, tmp_path):
    out = copy(tokenizer_run, tmp_path / "run")
    config = tmp_path / "wider.json"
    TokenizerConfig.preset("tiny", roi_size=16, base_channels=16).to_json(config)
    before = tree(out)
    result = train_tokenizer(roi_cache, out, "--steps", "3", "--config", str(config))
    failed_cleanly(result, "config.base_channels was 4, now 16")
    assert tree(out) == before


def test_resume_on_other_data_is_refused(roi_cache, tokenizer_run, tmp_path):
    out = copy(tokenizer_run, tmp_path / "run")
    other = copy(roi_cache, tmp_path / "other-cache")
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["subjects"] = manifest["subjects"][1:]  # one subject fewer
    (other / "manifest.json").write_text(json.dumps(manifest))
    before = tree(out)
    result = train_tokenizer(other, out, "--steps", "3")
    failed_cleanly(result, "data was ")
    assert tree(out) == before


def test_resume_to_more_steps_continues_and_to_fewer_is_refused(roi_cache, tokenizer_run, tmp_path):
    out = copy(tokenizer_run, tmp_path / "run")
    before = tree(out)
    fewer = train_tokenizer(roi_cache, out, "--steps", "1")
    failed_cleanly(fewer, "the run has done 2 steps, more than steps=1", "--steps")
    assert tree(out) == before
    more = train_tokenizer(roi_cache, out, "--steps", "3")
    assert more.exit_code == 0 and "trained 3 steps" in more.output, more.output


def test_resume_with_another_tokenizer_is_refused_before_re_encoding(
    roi_cache, tokenizers, transformer_run, tmp_path
):
    out = copy(transformer_run, tmp_path / "run")
    before = tree(out)  # the corpus of the first tokenizer included
    result = train_transformer(roi_cache, tokenizers[1], out, "--steps", "3")
    failed_cleanly(result, "cannot resume step_00000002", "tokenizer was ")
    assert tree(out) == before


def test_resume_from_a_training_state_with_altered_tensors_is_refused(
    roi_cache, tokenizer_run, tmp_path
):
    out = copy(tokenizer_run, tmp_path / "run")
    state = latest_checkpoint(out) / "training_state.safetensors"
    data = bytearray(state.read_bytes())
    data[-3] ^= 0x01  # one bit of one tensor: still a valid safetensors file
    state.write_bytes(bytes(data))
    before = tree(out)
    result = train_tokenizer(roi_cache, out, "--steps", "3")
    failed_cleanly(
        result, f"{state}: SHA-256 does not match", "training_state.json",
        "delete step_00000002 to resume from an earlier checkpoint", "--no-resume",
    )  # fmt: skip
    assert tree(out) == before


def test_a_checkpoint_without_a_run_record_is_not_resumed_blindly(
    roi_cache, tokenizer_run, tmp_path
):
    out = copy(tokenizer_run, tmp_path / "run")
    (latest_checkpoint(out) / RUN_NAME).unlink()  # as an older tumoraug wrote it
    before = tree(out)
    result = train_tokenizer(roi_cache, out, "--steps", "3")
    failed_cleanly(result, f"{RUN_NAME}: missing", "--no-resume")
    assert tree(out) == before


def test_every_checkpoint_records_what_the_run_was_started_with(transformer_run):
    record = json.loads((latest_checkpoint(transformer_run) / RUN_NAME).read_text())
    assert set(record) == {"config", "recipe", "train", "data", "tokenizer"}
    assert record["train"]["batch_size"] == 2 and record["train"]["seed"] == 0
    assert len(record["tokenizer"]) == len(record["data"]) == 64


def test_a_16_cubed_tokenizer_on_a_32_cubed_cache_fails_before_training(
    phantom_dir, tokenizers, tmp_path
):
    from tumoraug.data.cache import preprocess

    cache = tmp_path / "cache32"
    preprocess(phantom_dir, cache, size=32, modalities=("flair",))
    result = train_transformer(cache, tokenizers[0], tmp_path / "run", "--steps", "2")
    failed_cleanly(result, str(cache), "ROIs of shape (1, 32, 32, 32)",
                   "encodes (1, 16, 16, 16)", "--tokenizer")  # fmt: skip
    assert not (tmp_path / "run").exists()  # no half model folder


def test_train_tokenizer_steps_0_on_a_fresh_folder_is_refused(roi_cache, tmp_path):
    result = train_tokenizer(roi_cache, tmp_path / "run", "--steps", "0")
    failed_cleanly(result, "steps=0 on a fresh run", "randomly initialised", "--steps")
    assert not (tmp_path / "run").exists()


def test_train_transformer_steps_0_on_a_fresh_folder_is_refused(roi_cache, tokenizers, tmp_path):
    result = train_transformer(roi_cache, tokenizers[0], tmp_path / "run", "--steps", "0")
    failed_cleanly(result, "steps=0 on a fresh run", "--steps")
    assert not (tmp_path / "run").exists()  # not even the token corpus


def test_checkpoint_folders_are_readable_by_colleagues(tmp_path):
    """A step folder gets the mode of a plain ``mkdir`` (0o777 & ~umask), not 0o700."""
    import os
    import stat

    from tumoraug.config import TransformerConfig
    from tumoraug.training.corpus import TokenCorpus
    from tumoraug.training.transformer import train_transformer as train_stage2

    rng = torch.Generator().manual_seed(0)
    corpus = TokenCorpus(
        torch.randint(64, (8, 4, 4, 4), generator=rng),
        torch.rand(8, 4, 4, 4, generator=rng),
        torch.arange(8) % 2,
        64,
    )
    config = TransformerConfig.preset("tiny", dim=32, depth=1, heads=4)
    old = os.umask(0o022)
    try:
        train_stage2(config, corpus, tmp_path, TrainConfig(steps=1, batch_size=4, device="cpu"),
                     progress=False)  # fmt: skip
    finally:
        os.umask(old)
    assert stat.S_IMODE(latest_checkpoint(tmp_path).stat().st_mode) == 0o755
