"""Every baseline goes wherever a TumorGenerator goes: generate, banks, the dataset,
evaluate and evaluate-samples, unchanged; and `train-baseline` trains each kind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from extras import require_extra
from tumoraug import SyntheticBank, SyntheticTumorDataset, TumorGenerator, open_generator
from tumoraug.cli import app
from tumoraug.errors import CheckpointError, ConfigError
from tumoraug.training.baselines import BASELINES, run_baseline_training

TINY_CLI = ["--folds", "2", "--run-folds", "1", "--seeds", "0", "--epochs", "1", "--width", "4"]
FAST = {"ddpm": ["--steps", "2"], "latent-diffusion": ["--steps", "2"], "alpha-wgan": []}
"""CLI sampling options per kind that keep a tiny test fast."""


def diffusion_folders(root: Path, tiny_model_dir: Path) -> dict[str, Path]:
    """Random-weight DDPM and latent-diffusion folders at 16³ (MONAI needed)."""
    from tumoraug.baselines import DDPMGenerator, LatentDiffusionGenerator
    from tumoraug.models.diffusion import DiffusionConfig, DiffusionUNet3D

    tokenizer = TumorGenerator.from_pretrained(tiny_model_dir, device="cpu").tokenizer
    tokens = tokenizer.config
    latent = DiffusionConfig.preset("tiny").replace(
        roi_size=tokens.token_grid[0], in_channels=tokens.embed_dim, channels=(8, 8),
        attention_levels=(False, False), scale_factor=1.0,
    )  # fmt: skip
    return {
        "ddpm": DDPMGenerator(DiffusionUNet3D(DiffusionConfig.preset("tiny")), device="cpu")
        .save_pretrained(root / "ddpm"),
        "latent-diffusion": LatentDiffusionGenerator(
            tokenizer, DiffusionUNet3D(latent), device="cpu"
        ).save_pretrained(root / "latent-diffusion"),
    }  # fmt: skip


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tiny_model_dir) -> dict[str, Path]:
    """One random-weight model folder per baseline kind at 16³ (diffusion needs MONAI)."""
    from tumoraug.baselines import AlphaWGANGenerator
    from tumoraug.models.alpha_wgan import AlphaWGAN, AlphaWGANConfig

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("baselines")
    out = {
        "alpha-wgan": AlphaWGANGenerator(
            AlphaWGAN(AlphaWGANConfig.preset("tiny")), device="cpu"
        ).save_pretrained(root / "alpha-wgan")
    }
    require_extra("monai")
    out.update(diffusion_folders(root, tiny_model_dir))
    return out


@pytest.fixture(scope="module")
def eval_cache(tmp_path_factory) -> Path:
    """A 16³ ROI cache of 4 HGG + 4 LGG phantoms."""
    from tumoraug.data.cache import preprocess
    from tumoraug.data.phantom import write_phantom_dataset

    root = tmp_path_factory.mktemp("phantoms")
    write_phantom_dataset(root / "raw", per_class=4, seed=0, shape=(40, 40, 40))
    preprocess(root / "raw", root / "cache", size=16)
    return root / "cache"


@pytest.mark.parametrize("kind", list(FAST))
def test_the_cli_generates_nifti_and_a_bank_from_any_kind(kind, folders, tmp_path):
    out, bank = tmp_path / "nifti", tmp_path / "bank.npy"
    args = ["generate", "--model", str(folders[kind]), "--label", "HGG,LGG", "--n", "1"]
    result = CliRunner().invoke(
        app, [*args, *FAST[kind], "--out", str(out), "--bank", str(bank), "--device", "cpu"]
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["samples"]) == 2 and (out / "preview.png").is_file()
    opened = SyntheticBank.open(bank)
    assert (
        len(opened) == 2
        and opened.settings
        == open_generator(folders[kind])
        .check_sampling({"steps": 2} if FAST[kind] else None)
        .to_dict()
    )
    opened.append(open_generator(folders[kind], device="cpu"), 1)  # with the bank's settings
    assert len(SyntheticBank.open(bank)) == 3


def test_the_dataset_serves_every_kind_deterministically(folders):
    for kind, folder in folders.items():
        sampling = {"steps": 2} if FAST[kind] else None
        a = SyntheticTumorDataset(str(folder), length=3, seed=4, sampling=sampling)
        b = SyntheticTumorDataset(str(folder), length=3, seed=4, sampling=sampling)
        assert torch.equal(a.volumes(range(3)), b.volumes(range(3))), kind
        item = a[1]
        assert item.image.data.shape == (1, 16, 16, 16) and item.label in (0, 1)
        assert float(item.image.data.abs().max()) <= 1.0


def test_settings_of_another_kind_are_refused_by_name(folders):
    ddpm = open_generator(folders["ddpm"], device="cpu")
    with pytest.raises(ConfigError, match="no sampling setting temperature"):
        ddpm.generate("HGG", sampling={"temperature": 0.5})
    wgan = open_generator(folders["alpha-wgan"], device="cpu")
    with pytest.raises(ConfigError, match="no sampling setting guidance_scale"):
        wgan.generate("HGG", sampling={"guidance_scale": 2.0})
    result = CliRunner().invoke(
        app,
        [
            "generate",
            "--model",
            str(folders["alpha-wgan"]),
            "-l",
            "HGG",
            "--steps",
            "3",
            "--out",
            "x",
        ],
    )
    assert result.exit_code != 0 and "no sampling setting steps" in result.output
    assert "Traceback" not in result.output


def test_counted_network_evaluations_match_the_declared_ones(folders):
    for kind, folder in folders.items():
        generator = open_generator(folder, device="cpu").load()
        name = {"ddpm": "unet", "latent-diffusion": "unet", "alpha-wgan": "model"}[kind]
        network = generator.models[name]
        network = getattr(network, "generator", network)
        rows: list[int] = []
        hook = network.register_forward_hook(lambda m, a, o, seen=rows: seen.append(len(a[0])))
        sampling = {"steps": 3} if FAST[kind] else None
        generator.generate("LGG", n=1, seed=0, sampling=sampling)
        hook.remove()
        assert sum(rows) == generator.network_evaluations(sampling), kind


@pytest.mark.parametrize("kind", list(FAST))
def test_evaluate_runs_the_downstream_protocol_on_any_kind(kind, folders, eval_cache, tmp_path):
    args = ["evaluate", "--data", str(eval_cache), "--model", str(folders[kind]), *FAST[kind]]
    args += ["--conditions", "real,mixed", "--ratio", "0.5"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path), *TINY_CLI])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["n_synthetic"] == 2
    (source,) = data["sources"].values()
    assert source["model"] == str(folders[kind])


def test_evaluate_samples_compares_every_kind_with_ours(
    folders, eval_cache, tiny_model_dir, tmp_path
):
    args = ["evaluate-samples", "--data", str(eval_cache), "--n", "2", "--steps", "2"]
    models = [tiny_model_dir, folders["ddpm"], folders["latent-diffusion"]]
    for folder in models:
        args += ["--model", str(folder)]
    result = CliRunner().invoke(app, [*args, "--device", "cpu", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "samples.json").read_text())
    assert len(report["rows"]) == 2 * len(models)
    per_model = report["settings"]["sampling"]["per_model"]
    assert {settings["steps"] for settings in per_model.values()} == {2}


def test_train_baseline_trains_a_kind_from_the_cli_and_refuses_bad_requests(roi_cache, tmp_path):
    out = tmp_path / "wgan"
    args = ["train-baseline", "alpha-wgan", str(roi_cache), str(out), "--preset", "tiny"]
    args += ["--steps", "1", "--batch-size", "2", "--device", "cpu", "--recipe", "critic_steps=2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert open_generator(out, device="cpu").generate("HGG").shape == (1, 1, 16, 16, 16)
    with pytest.raises(ConfigError, match="unknown baseline 'vae'"):
        run_baseline_training("vae", roi_cache, tmp_path / "x")
    with pytest.raises(ConfigError, match="--autoencoder"):
        run_baseline_training("latent-diffusion", roi_cache, tmp_path / "x")
    with pytest.raises(ConfigError, match="latent-diffusion only"):
        run_baseline_training("ddpm", roi_cache, tmp_path / "x", autoencoder="tok")
    bad = CliRunner().invoke(app, [*args[:4], "--recipe", "critic_steps"])
    assert bad.exit_code != 0 and "FIELD=VALUE" in bad.output
    assert set(BASELINES) == set(FAST)


def test_a_folder_of_an_unknown_kind_is_a_clear_error(folders, tmp_path):
    import shutil

    copy = Path(shutil.copytree(folders["alpha-wgan"], tmp_path / "copy"))
    manifest = json.loads((copy / "tumoraug.json").read_text())
    (copy / "tumoraug.json").write_text(json.dumps({**manifest, "model_type": "gan9"}))
    with pytest.raises(CheckpointError, match="model_type 'gan9'"):
        open_generator(copy)
    with pytest.raises(CheckpointError, match=r"open it with tumoraug\.open_generator"):
        TumorGenerator.from_pretrained(folders["alpha-wgan"])
