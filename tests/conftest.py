"""Shared fixtures: tiny inputs only (16³–32³ volumes), everything on CPU, no network."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_configure(config):
    """One thread for the whole run: tiny 3D convolutions run fastest single-threaded on the
    shared 2-core CI machine (two threads made some tests ~20x slower under load), and oneDNN
    results depend on the thread count by ~1e-6, so module- and session-scoped fixtures must
    compute under the same count as the tests that compare against them."""
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _deterministic_torch():
    """Seed torch for every test, and put the thread count back if a test changed it."""
    torch.manual_seed(0)
    yield
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A full TumorGenerator folder (16³ ROIs, random weights) for plumbing tests."""
    from tumoraug.config import TokenizerConfig, TransformerConfig
    from tumoraug.generator import TumorGenerator
    from tumoraug.models.transformer import MaskedTransformer
    from tumoraug.models.vqgan import VQGAN3D

    torch.manual_seed(0)
    tokenizer = VQGAN3D(TokenizerConfig.preset("tiny"))
    transformer = MaskedTransformer(TransformerConfig.preset("tiny", dim=32, depth=1))
    directory = tmp_path_factory.mktemp("models") / "tiny-generator"
    TumorGenerator(tokenizer, transformer, device="cpu").save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def generator(tiny_model_dir):
    """The `tiny_model_dir` generator, loaded once per test module (CPU)."""
    from tumoraug.generator import TumorGenerator

    return TumorGenerator.from_pretrained(tiny_model_dir, device="cpu")


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """Return ``put(folder, repo_id)``: copies a folder into a local HF cache as that repo's
    ``main`` snapshot (the layout ``huggingface_hub`` writes), with offline mode on."""
    import shutil

    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))

    def put(folder, repo_id: str, revision: str = "0123456789abcdef0123456789abcdef01234567"):
        storage = cache / f"models--{repo_id.replace('/', '--')}"
        shutil.copytree(folder, storage / "snapshots" / revision)
        (storage / "refs").mkdir(parents=True, exist_ok=True)
        (storage / "refs" / "main").write_text(revision)
        return storage / "snapshots" / revision

    return put


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory):
    """A tiny BraTS-2019-layout folder: 3 HGG + 3 LGG phantoms of 48×48×32, seed 0 (read-only)."""
    from tumoraug.data.phantom import write_phantom_dataset

    return write_phantom_dataset(
        tmp_path_factory.mktemp("phantoms") / "brats", 3, seed=0, shape=(48, 48, 32)
    )


@pytest.fixture(scope="session")
def roi_cache(phantom_dir, tmp_path_factory):
    """The ROI cache of `phantom_dir` at size 16, FLAIR only (read-only; `ROIDataset` reads it)."""
    from tumoraug.data.cache import preprocess

    out = tmp_path_factory.mktemp("roi-cache") / "rois"
    preprocess(phantom_dir, out, size=16, modalities=("flair",))
    return out
