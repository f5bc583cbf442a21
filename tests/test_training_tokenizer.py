import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchio as tio
from safetensors.torch import load_file, save_file
from torch import nn

from tumoraug.config import TokenizerConfig
from tumoraug.errors import ConfigError
from tumoraug.models.vqgan import VQGAN3D
from tumoraug.training.config import TrainConfig
from tumoraug.training.loop import fit
from tumoraug.training.tokenizer import (
    TokenizerRecipe,
    TokenizerTask,
    collate_rois,
    train_tokenizer,
)

TESTS = Path(__file__).parent


def make_items(n=8, size=16):
    """Blobs on noise, with their masks: a stand-in for phantom ROIs."""
    g = torch.Generator().manual_seed(7)
    grid = torch.stack(torch.meshgrid(*[torch.arange(size)] * 3, indexing="ij")).float()
    items = []
    for i in range(n):
        centre = torch.rand(3, 1, 1, 1, generator=g) * size / 2 + size / 4
        mask = ((grid - centre).pow(2).sum(0) < (size / 5) ** 2)[None]
        image = 0.3 * torch.rand(1, size, size, size, generator=g) - 0.5 + mask.float()
        items.append(
            tio.Subject(
                image=tio.ScalarImage(tensor=image, affine=np.eye(4)),
                seg=tio.LabelMap(tensor=mask.long(), affine=np.eye(4)),
                label=i % 2,
            )
        )
    return items


def tiny(**overrides):
    return TokenizerConfig.preset("tiny", **overrides)


def recipe(**overrides):
    return TokenizerRecipe.preset("tiny", **overrides)


def train(**overrides):
    return TrainConfig.preset("tokenizer", device="cpu", **overrides)


class RandomFeatures(nn.Module):
    """A stand-in for user-supplied perceptual weights: two random conv layers."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv3d(1, 4, 3, padding=1)
        self.b = nn.Conv3d(4, 4, 3, stride=2, padding=1)

    def forward(self, x):
        first = torch.relu(self.a(x))
        return [first, self.b(first)]


def test_train_tokenizer_writes_model_metrics_and_montages(tmp_path):
    config = tiny()
    result = train_tokenizer(
        config, make_items(), tmp_path,
        train(steps=3, batch_size=2, log_every=1, image_every=2, checkpoint_every=2),
        recipe(disc_start=1, restart_every=2, perceptual_weight=0.1),
        perceptual_net=RandomFeatures(), progress=False,
    )  # fmt: skip
    assert result.step == 3
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert "g_loss" not in records[0] and "g_loss" in records[1]
    assert 0 < records[1]["codebook_used"] <= 1 and "codes_restarted" in records[1]
    assert {"l1", "quant", "grade_loss", "grade_acc", "perceptual", "perplexity"} <= set(records[0])
    assert (tmp_path / "samples" / "step_00000002.png").stat().st_size > 0
    model = VQGAN3D.from_pretrained(tmp_path / "tokenizer")
    assert model.config == config
    tokens, importance = model.encode(torch.zeros(1, 1, 16, 16, 16))
    assert tokens.shape == importance.shape == (1, 4, 4, 4)


def test_importance_classifier_learns_the_grade_on_tiny_phantoms(roi_cache, tmp_path):
    """The paper's score network + grade head: HGG/LGG above chance after a few steps."""
    from tumoraug.data import ROIDataset, subject_tensors

    data = ROIDataset(roi_cache)
    run = train(steps=40, batch_size=6, lr=3e-3, image_every=0, checkpoint_every=0)
    rec = recipe(classifier_weight=0.5, disc_weight=0.0)
    train_tokenizer(tiny(), data, tmp_path, run, rec, progress=False)
    model = VQGAN3D.from_pretrained(tmp_path / "tokenizer")
    images = torch.cat([subject_tensors(data[i])[0] for i in range(len(data))])
    with torch.no_grad():
        predicted = model(images).grade_logits.argmax(-1)
    accuracy = (predicted == torch.tensor(data.labels)).float().mean().item()
    assert accuracy > 0.5, accuracy


def test_grade_weights_balance_a_minority_grade():
    from tumoraug.training.grades import grade_weights

    weights = grade_weights([10, 30], 2, recipe().balance_classes)
    assert torch.allclose(weights, torch.tensor([2.0, 2 / 3]))
    assert torch.equal(
        grade_weights([10, 30], 2, recipe(balance_classes=False).balance_classes), torch.ones(2)
    )


def test_perceptual_weight_needs_a_network_and_roi_size_must_match(tmp_path):
    with pytest.raises(ConfigError, match="perceptual_net"):
        train_tokenizer(
            tiny(), make_items(), tmp_path, train(steps=1), recipe(perceptual_weight=1.0)
        )
    shapes = r"\(1, 16, 16, 16\), but the TokenizerConfig expects \(1, 32, 32, 32\)"
    with pytest.raises(ConfigError, match=shapes + ".*--roi-size"):
        train_tokenizer(tiny(roi_size=32), make_items(), tmp_path, train(steps=1))


def checkpoint_weights(directory):
    return {
        name: load_file(str(directory / name / "model.safetensors"))
        for name in ("tokenizer", "discriminator")
    }


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    config, rec = tiny(), recipe(disc_start=1, restart_every=2)
    options = dict(batch_size=2, seed=4, checkpoint_every=1)
    for out, steps in (("full", 4), ("cut", 2), ("cut", 4)):
        run = train(steps=steps, **options)
        train_tokenizer(config, make_items(), tmp_path / out, run, rec, progress=False)
    full = checkpoint_weights(tmp_path / "full" / "checkpoints" / "step_00000004")
    cut = checkpoint_weights(tmp_path / "cut" / "checkpoints" / "step_00000004")
    for module in full:
        for key, value in full[module].items():
            assert torch.equal(value, cut[module][key]), (module, key)


class GradRecorder(TokenizerTask):
    """Saves the tokenizer's gradients after each step (rank 0) for the DDP comparison."""

    def __init__(self, model, out):
        # classifier_weight 0: the grade head's dropout draws differ between ranks and one
        # process, and at weight 0 they cannot reach a gradient.
        super().__init__(model, recipe(restart_every=0, classifier_weight=0.0), lr=1e-3)
        self.out = Path(out)

    def after_step(self, ctx):
        if ctx.is_main:
            grads = {n: p.grad.clone() for n, p in self.model.named_parameters()}
            save_file(grads, str(self.out / f"grads_{ctx.step}.safetensors"))
        return super().after_step(ctx)


def run_recorder(out, batch_size):
    torch.manual_seed(0)
    Path(out).mkdir(parents=True, exist_ok=True)
    task = GradRecorder(VQGAN3D(tiny()), out)
    run = train(steps=2, batch_size=batch_size)
    fit(task, make_items(), out, run, progress=False, collate_fn=collate_rois)


DDP_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from test_training_tokenizer import run_recorder
run_recorder(sys.argv[1], batch_size=2)
"""


def test_ddp_two_cpu_processes_match_single_process_gradients(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT.format(tests=str(TESTS)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    done = subprocess.run(
        [*torchrun, "--nproc-per-node", "2", str(script), str(tmp_path / "ddp")],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    run_recorder(tmp_path / "single", batch_size=4)
    for step in (0, 1):
        ddp = load_file(str(tmp_path / "ddp" / f"grads_{step}.safetensors"))
        single = load_file(str(tmp_path / "single" / f"grads_{step}.safetensors"))
        assert ddp.keys() == single.keys()
        for key, value in single.items():
            assert torch.allclose(ddp[key], value, rtol=1e-4, atol=1e-6), (step, key)
    # Only rank 0 wrote: one metrics line for the last step, one loadable model.
    lines = (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [2]
    assert VQGAN3D.from_pretrained(tmp_path / "ddp" / "tokenizer").config == tiny()


def test_cli_train_tokenizer_on_a_phantom_cache(tmp_path):
    from typer.testing import CliRunner

    from tumoraug.cli import app
    from tumoraug.data import preprocess, write_phantom_dataset

    write_phantom_dataset(tmp_path / "ph", 2, seed=0, shape=(32, 32, 32))
    preprocess(tmp_path / "ph", tmp_path / "cache", size=16)
    args = ["train-tokenizer", str(tmp_path / "cache"), str(tmp_path / "out"), "--preset", "tiny"]
    options = ["--steps", "2", "--batch-size", "2", "--device", "cpu", "--image-every", "1"]
    result = CliRunner().invoke(app, [*args, *options])
    assert result.exit_code == 0, result.output
    assert "trained 2 steps" in result.stdout
    assert VQGAN3D.from_pretrained(tmp_path / "out" / "tokenizer").config.roi_size == 16
    assert (tmp_path / "out" / "samples" / "step_00000002.png").is_file()
    bf16 = CliRunner().invoke(
        app, [*args[:2], str(tmp_path / "bf16"), *args[3:], *options[:6], "--cpu-bf16"]
    )
    assert bf16.exit_code == 0, bf16.output
    record = next((tmp_path / "bf16" / "checkpoints").glob("step_*/run.json"))
    assert json.loads(record.read_text())["train"]["cpu_bf16"] is True
    missing = CliRunner().invoke(app, ["train-tokenizer", str(tmp_path / "nope"), str(tmp_path)])
    assert missing.exit_code == 1 and "nope" in missing.output
