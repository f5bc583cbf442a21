"""The diffusion baselines (image-space DDPM, latent diffusion) at 16³ with tiny widths:
train, save, open, sample deterministically per seed, resume, and refuse bad input."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file

from extras import require_extra
from tumoraug.errors import CheckpointError, ConfigError, DataError
from tumoraug.generators import MANIFEST_NAME, open_generator, read_manifest
from tumoraug.sampling import SamplingConfig
from tumoraug.training.config import TrainConfig

require_extra("monai")

from tumoraug.baselines.ddpm import DDPMGenerator, DiffusionSampling  # noqa: E402
from tumoraug.baselines.latent_diffusion import LatentDiffusionGenerator  # noqa: E402
from tumoraug.models.diffusion import DiffusionConfig, DiffusionUNet3D  # noqa: E402
from tumoraug.training.diffusion import (  # noqa: E402
    LATENTS_NAME,
    DiffusionRecipe,
    run_ddpm_training,
    train_ddpm,
    train_latent_diffusion,
)

FAST = DiffusionSampling(steps=3)
KINDS = ("ddpm", "latent")


def run(steps: int) -> TrainConfig:
    return TrainConfig(steps=steps, batch_size=2, log_every=1, device="cpu")


def train(kind: str, roi_cache, tiny_model_dir, out, steps: int = 2):
    if kind == "ddpm":
        return train_ddpm("tiny", roi_cache, out, run(steps), progress=False)
    return train_latent_diffusion(
        "tiny", tiny_model_dir, roi_cache, out, run(steps), progress=False
    )


@pytest.fixture(scope="module")
def trained(roi_cache, tiny_model_dir, tmp_path_factory):
    """``kind -> folder`` of each baseline trained 2 steps on the tiny ROI cache, on one
    thread like the tests (the thread count changes the last bits of a convolution)."""
    root = tmp_path_factory.mktemp("diffusion")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for kind in KINDS:
            train(kind, roi_cache, tiny_model_dir, root / kind)
    finally:
        torch.set_num_threads(threads)
    return {kind: root / kind for kind in KINDS}


@pytest.fixture(scope="module")
def opened(trained):
    return {kind: open_generator(path, device="cpu") for kind, path in trained.items()}


@pytest.mark.parametrize("kind", KINDS)
def test_training_writes_a_generator_folder_that_opens(kind, trained, opened):
    generator = opened[kind]
    expected = DDPMGenerator if kind == "ddpm" else LatentDiffusionGenerator
    assert type(generator) is expected and not generator.is_loaded
    assert (generator.roi_size, generator.in_channels, generator.modalities) == (16, 1, ("flair",))
    manifest = read_manifest(trained[kind])
    assert manifest["model_type"] == expected.model_type
    assert manifest["num_train_timesteps"] == 1000
    assert (trained[kind] / "metrics.jsonl").read_text().count("\n") == 2
    if kind == "latent":  # the tiny tokenizer: 4 dimensions on a 4³ grid
        assert manifest["latent_shape"] == [4, 4, 4, 4]
        scale = generator.unet_config.scale_factor
        latents = load_file(trained[kind] / LATENTS_NAME)["latents"]
        assert scale == pytest.approx(1 / float(latents.std()))


@pytest.mark.parametrize("kind", KINDS)
def test_samples_depend_only_on_label_seed_and_settings(kind, opened):
    generator = opened[kind]
    labels, seeds = ["HGG", "HGG", "LGG", "HGG"], [1, 2, 1, 1]
    volumes = generator.generate(labels, seed=seeds, sampling=FAST, batch_size=4)
    assert volumes.shape == (4, 1, 16, 16, 16) and volumes.dtype == torch.float32
    assert volumes.min() >= -1 and volumes.max() <= 1
    assert torch.equal(volumes[0], volumes[3])  # same label and seed
    assert not torch.equal(volumes[0], volumes[1])  # another seed
    assert not torch.equal(volumes[0], volumes[2])  # another grade
    one_by_one = generator.generate(labels, seed=seeds, sampling=FAST, batch_size=1)
    assert torch.equal(volumes, one_by_one)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "sampling",
    [
        DiffusionSampling(scheduler="ddpm", steps=3),
        DiffusionSampling(scheduler="ddim", steps=2, eta=0.5),
        DiffusionSampling(steps=2, guidance_scale=1.0),
    ],
    ids=["ddpm", "ddim-eta", "unguided"],
)
def test_ddpm_and_ddim_settings_sample_reproducibly(kind, sampling, opened):
    generator = opened[kind]
    first = generator.generate("LGG", n=2, seed=5, sampling=sampling)
    assert first.shape == (2, 1, 16, 16, 16)
    assert torch.equal(first, generator.generate("LGG", n=2, seed=5, sampling=sampling))
    assert not torch.equal(first, generator.generate("LGG", n=2, seed=5, sampling=FAST))


def test_network_evaluations_count_guidance_and_steps(opened):
    generator = opened["ddpm"]
    assert generator.network_evaluations() == 100  # DDIM-50, guided
    assert generator.network_evaluations(FAST) == 6
    assert generator.network_evaluations({"steps": 3, "guidance_scale": 1.0}) == 3
    assert generator.network_evaluations(DiffusionSampling.preset("ddpm1000")) == 2000


@pytest.mark.parametrize("kind", KINDS)
def test_resume_continues_exactly(kind, roi_cache, tiny_model_dir, trained, tmp_path):
    out = tmp_path / kind
    assert train(kind, roi_cache, tiny_model_dir, out, steps=1).step == 1
    result = train(kind, roi_cache, tiny_model_dir, out, steps=2)
    assert (result.resumed_from, result.step) == (1, 2)
    resumed = load_file(out / "unet" / "model.safetensors")
    straight = load_file(trained[kind] / "unet" / "model.safetensors")
    assert resumed.keys() == straight.keys()
    assert all(torch.equal(resumed[k], straight[k]) for k in resumed)


def test_wrong_settings_are_config_errors(opened):
    generator = opened["ddpm"]
    with pytest.raises(ConfigError, match="DiffusionSampling"):
        generator.generate("HGG", n=1, sampling=SamplingConfig(steps=2))
    with pytest.raises(ConfigError, match="at most 1000"):
        generator.generate("HGG", n=1, sampling=DiffusionSampling(steps=1001))
    with pytest.raises(ConfigError, match="scheduler"):
        DiffusionSampling(scheduler="euler")
    with pytest.raises(ConfigError, match="eta"):
        DiffusionSampling(scheduler="ddpm", eta=0.5)
    with pytest.raises(ConfigError, match="channels"):
        DiffusionConfig.preset("tiny", channels=(8, 12))
    with pytest.raises(ConfigError, match="loss"):
        DiffusionRecipe(loss="huber")


@pytest.mark.parametrize("kind", KINDS)
def test_missing_weights_are_a_checkpoint_error(kind, trained, tmp_path):
    folder = shutil.copytree(trained[kind], tmp_path / kind)
    (folder / "unet" / "model.safetensors").unlink()
    generator = open_generator(folder, device="cpu")  # reads JSON only
    with pytest.raises(CheckpointError, match="missing weights file"):
        generator.generate("HGG", n=1, sampling=FAST)


def test_roi_shape_mismatch_names_both_shapes(roi_cache, tmp_path):
    from tumoraug.config import TokenizerConfig
    from tumoraug.models.vqgan import VQGAN3D

    with pytest.raises(ConfigError, match=r"\(1, 16, 16, 16\).*\(1, 32, 32, 32\)"):
        train_ddpm("small32", roi_cache, tmp_path / "ddpm", run(1), progress=False)
    autoencoder = VQGAN3D(TokenizerConfig.preset("tiny", roi_size=32))
    with pytest.raises(ConfigError, match=r"\(1, 16, 16, 16\).*\(1, 32, 32, 32\)"):
        train_latent_diffusion("tiny", autoencoder, roi_cache, tmp_path / "ldm", run(1))
    with pytest.raises(DataError, match="no ROI cache folder"):
        run_ddpm_training(tmp_path / "nothing", tmp_path / "out", preset="tiny")
    assert not (tmp_path / "ddpm").exists() and not (tmp_path / "ldm").exists()


def test_components_that_do_not_fit_are_refused(opened):
    autoencoder = opened["latent"].autoencoder
    unet = DiffusionUNet3D(DiffusionConfig.preset("tiny"))  # 16³ x 1, not the 4³ x 4 latents
    with pytest.raises(CheckpointError, match=r"\(1, 16, 16, 16\).*\(4, 4, 4, 4\)"):
        LatentDiffusionGenerator(autoencoder, unet, device="cpu")
    scaled = DiffusionUNet3D(DiffusionConfig.preset("tiny", scale_factor=2.0))
    with pytest.raises(CheckpointError, match="scale_factor"):
        DDPMGenerator(scaled, device="cpu")


def test_a_live_generator_saves_and_reopens(opened, tmp_path):
    live = DDPMGenerator(opened["ddpm"].unet, device="cpu")
    live.save_pretrained(tmp_path / "copy")
    assert (tmp_path / "copy" / MANIFEST_NAME).is_file()
    again = open_generator(tmp_path / "copy", device="cpu")
    sampling = DiffusionSampling(steps=2)
    assert torch.equal(live.generate("HGG", seed=3, sampling=sampling),
                       again.generate("HGG", seed=3, sampling=sampling))  # fmt: skip


@pytest.mark.parametrize("kind", KINDS)
def test_a_baseline_feeds_the_synthetic_dataset(kind, trained):
    from tumoraug.augment import SyntheticTumorDataset

    dataset = SyntheticTumorDataset(
        trained[kind], length=4, sampling=DiffusionSampling(steps=2), device="cpu"
    )
    item = dataset[1]
    assert item["image"].data.shape == (1, 16, 16, 16)
    assert int(item["label"]) == dataset.labels[1]
    again = SyntheticTumorDataset(trained[kind], length=4, sampling={"steps": 2}, device="cpu")
    assert torch.equal(again[1]["image"].data, item["image"].data)


@pytest.mark.parametrize(
    ("scheduler", "steps", "tolerance"), [("ddim", 50, 1e-5), ("ddpm", 1000, 1e-3)]
)
def test_the_sampling_loop_recovers_the_one_volume_an_exact_noise_predictor_knows(
    scheduler, steps, tolerance
):
    """With the ideal noise predictor of a one-volume data set, eps = (x_t − √ᾱ·x*) / √(1−ᾱ),
    DDIM and ancestral DDPM must end at x*: the loop, the schedule and the guidance
    arithmetic are right, whatever a trained UNet learned."""
    from torch import nn

    from tumoraug.baselines.ddpm import denoise
    from tumoraug.models.diffusion import noise_scheduler

    config = DiffusionConfig.preset("tiny")
    alphas = noise_scheduler(config).alphas_cumprod
    target = torch.linspace(-1, 1, 16**3).reshape(1, *config.sample_shape)

    class Oracle(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.config, self.anchor = config, nn.Parameter(torch.zeros(1))

        def forward(self, x, t, labels):
            a = alphas[t].view(-1, 1, 1, 1, 1)
            return (x - a.sqrt() * target) / (1 - a).sqrt()

    sampling = DiffusionSampling(scheduler=scheduler, steps=steps, guidance_scale=1.5)
    rngs = [torch.Generator().manual_seed(0)]
    out = denoise(Oracle(), [1], rngs, sampling, clip_sample=True)
    assert (out - target).abs().max() < tolerance
