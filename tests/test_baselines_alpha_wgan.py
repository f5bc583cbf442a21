"""The 3D-αWGAN baseline at 16³ with tiny widths: training, the model folder, sampling."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tumoraug.baselines.alpha_wgan import AlphaWGANGenerator, LatentSampling
from tumoraug.errors import CheckpointError, ConfigError
from tumoraug.generators import open_generator
from tumoraug.models.alpha_wgan import AlphaWGAN, AlphaWGANConfig
from tumoraug.sampling import SamplingConfig
from tumoraug.training.alpha_wgan import (
    AlphaWGANRecipe,
    run_alpha_wgan_training,
    train_alpha_wgan,
)
from tumoraug.training.config import TrainConfig

DEMO = Path(__file__).parents[1] / "src" / "tumoraug" / "pretrained" / "demo"
LOSSES = ("loss/generator", "loss/discriminator", "loss/code_discriminator")


def train(**overrides) -> TrainConfig:
    return TrainConfig.preset("alpha_wgan", device="cpu", batch_size=2, **overrides)


@pytest.fixture(scope="module")
def trained(roi_cache, tmp_path_factory) -> Path:
    """Two steps (one critic, one encoder-generator update) on the tiny ROI cache, on one
    thread like the tests (module fixtures run before the autouse one), so that a resumed
    run can match it bit for bit."""
    out = tmp_path_factory.mktemp("alpha-wgan") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_alpha_wgan(
            "tiny", roi_cache, out, train(steps=2, log_every=1, image_every=2), progress=False
        )
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.fixture(scope="module")
def opened(trained) -> AlphaWGANGenerator:
    return open_generator(trained, device="cpu")


def test_training_logs_finite_losses_of_both_phases_and_a_montage(trained):
    lines = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2]
    seen = {k: v for line in lines for k, v in line.items() if k.startswith("loss/")}
    assert set(seen) == set(LOSSES)
    assert all(math.isfinite(v) for v in seen.values())
    assert math.isfinite(lines[0]["gradient_penalty"]) and lines[0]["gradient_penalty"] >= 0
    assert (trained / "samples" / "step_00000002.png").is_file()


def test_the_folder_opens_as_an_alpha_wgan_generator(trained, opened):
    assert isinstance(opened, AlphaWGANGenerator) and not opened.is_loaded
    manifest = json.loads((trained / "tumoraug.json").read_text())
    assert manifest["model_type"] == "alpha_wgan_generator" and manifest["latent_dim"] == 16
    assert (opened.roi_size, opened.in_channels, opened.modalities) == (16, 1, ("flair",))
    assert opened.network_evaluations() == 1


def test_generation_is_deterministic_per_seed_and_batch_invariant(opened):
    labels = ["LGG", "HGG", "HGG"]
    volumes = opened.generate(labels, seed=3)
    assert volumes.shape == (3, 1, 16, 16, 16) and volumes.dtype == torch.float32
    assert volumes.min() >= -1 and volumes.max() <= 1
    assert torch.equal(volumes, opened.generate(labels, seed=3, batch_size=1))
    assert not torch.equal(volumes, opened.generate(labels, seed=4))
    assert not torch.equal(volumes[1], volumes[2])  # same grade, own seed
    seeds = [7, 7]
    pair = opened.volumes(["LGG", "HGG"], seeds)
    assert not torch.equal(pair[0], pair[1])  # same draw, other grade
    assert torch.equal(pair[1:], opened.volumes(["HGG"], seeds[1:]))
    calmer = opened.generate(labels, seed=3, sampling=LatentSampling(noise_scale=0.5))
    assert not torch.equal(calmer, volumes)


def test_synthetic_tumor_dataset_serves_it(opened):
    from tumoraug.augment import SyntheticTumorDataset

    item = SyntheticTumorDataset(opened, length=4, labels="HGG")[1]
    assert item["image"].data.shape == (1, 16, 16, 16) and item["label"] == 1
    alone = SyntheticTumorDataset(opened, length=4, labels="HGG", block_size=1)[1]
    assert torch.equal(item["image"].data, alone["image"].data)


def test_settings_are_checked(opened):
    with pytest.raises(ConfigError, match="LatentSampling"):
        opened.generate("HGG", sampling=SamplingConfig())
    with pytest.raises(ConfigError, match="noise_scale"):
        LatentSampling(noise_scale=0)
    with pytest.raises(ConfigError, match="roi_size"):
        AlphaWGANConfig(roi_size=16)  # three widths make 32³
    with pytest.raises(ConfigError, match="critic_steps"):
        AlphaWGANRecipe(critic_steps=0)


def test_a_missing_weights_file_is_a_checkpoint_error(trained, tmp_path):
    copy = shutil.copytree(trained, tmp_path / "copy")
    (copy / "model" / "model.safetensors").unlink()
    generator = open_generator(copy, device="cpu")  # reads only the JSON files
    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        generator.generate("LGG")


def test_resume_continues_the_run_exactly(roi_cache, trained, tmp_path):
    out = tmp_path / "resumed"
    options = {"steps": 1, "batch_size": 2, "device": "cpu"}
    first = run_alpha_wgan_training(roi_cache, out, preset="tiny", train=options, progress=False)
    assert first.step == 1
    options["steps"] = 2
    second = run_alpha_wgan_training(roi_cache, out, preset="tiny", train=options, progress=False)
    assert (second.resumed_from, second.step) == (1, 2)
    resumed = load_file(out / "model" / "model.safetensors")
    straight = load_file(trained / "model" / "model.safetensors")
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)


def test_a_cpu_bf16_run_keeps_its_losses_finite(roi_cache, tmp_path):
    result = train_alpha_wgan(
        "tiny", roi_cache, tmp_path, train(steps=2, cpu_bf16=True), progress=False
    )
    assert set(LOSSES) <= set(result.metrics)
    assert all(math.isfinite(result.metrics[k]) for k in LOSSES)
    volumes = open_generator(tmp_path, device="cpu", cpu_bf16=True).generate(["LGG", "HGG"])
    assert torch.isfinite(volumes).all()


def test_a_roi_size_mismatch_names_both_sizes(roi_cache, tmp_path):
    with pytest.raises(
        ConfigError, match=r"\(1, 16, 16, 16\), but the AlphaWGANConfig expects \(1, 32, 32, 32\)"
    ):
        train_alpha_wgan("small32", roi_cache, tmp_path, train(steps=1))
    with pytest.raises(ConfigError, match="roi_size"):
        run_alpha_wgan_training(roi_cache, tmp_path, preset="small32", train={"steps": 1})


def test_small32_samples_with_the_parameters_of_the_demo_generator():
    from tumoraug.generator import TumorGenerator

    demo = TumorGenerator.from_pretrained(DEMO, device="cpu")
    ours = sum(p.numel() for m in demo.models.values() for p in m.parameters())
    alpha = AlphaWGAN(AlphaWGANConfig.preset("small32")).sampling_parameters()
    assert abs(alpha / ours - 1) <= 0.3


DDP_SCRIPT = """
import sys
from tumoraug.training.alpha_wgan import run_alpha_wgan_training
options = {"steps": 2, "batch_size": 2, "device": "cpu"}
run_alpha_wgan_training(sys.argv[1], sys.argv[2], preset="tiny", train=options, progress=False)
"""


def test_two_cpu_processes_train_it_under_ddp(roi_cache, tmp_path):
    """Each wrapped network runs once per step and the penalty's double backward syncs."""
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    done = subprocess.run(
        [*torchrun, "--nproc-per-node", "2", str(script), str(roi_cache), str(tmp_path / "ddp")],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    lines = (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [2]  # rank 0 alone writes
    assert open_generator(tmp_path / "ddp", device="cpu").generate("LGG").shape == (
        1,
        1,
        16,
        16,
        16,
    )
