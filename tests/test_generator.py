"""TumorGenerator: lazy loading, label forms, per-sample seeds, pickling, folders, Hub cache."""

from __future__ import annotations

import json
import pickle
import shutil

import pytest
import torch

from tumoraug import TumorGenerator
from tumoraug.config import TransformerConfig, TokenizerConfig
from tumoraug.errors import CheckpointError, LabelError
from tumoraug.models.transformer import MaskedTransformer
from tumoraug.models.vqgan import VQGAN3D

FAST = dict(steps=2, guidance_scale=1.5)


def test_from_pretrained_reads_only_configs(tiny_model_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "generator" / "model.safetensors").write_bytes(b"not weights")
    generator = TumorGenerator.from_pretrained(broken, device="cpu")  # no weights touched
    assert not generator.is_loaded
    assert generator.roi_size == 16 and generator.in_channels == 1
    with pytest.raises(CheckpointError, match="SHA-256"):
        generator.generate("HGG", n=1, **FAST)


def test_generate_shapes_range_and_labels(tiny_model_dir):
    generator = TumorGenerator.from_pretrained(tiny_model_dir, device="auto")
    out = generator.generate("HGG", n=3, seed=0, **FAST)
    assert generator.is_loaded
    assert out.shape == (3, 1, 16, 16, 16) and out.dtype == torch.float32
    assert out.device.type == "cpu"
    assert float(out.min()) >= -1.0 and float(out.max()) <= 1.0
    mixed = generator.generate(["LGG", 1, "hgg", 0], seed=0, **FAST)
    assert mixed.shape[0] == 4
    assert generator.generate(1, seed=0, **FAST).shape[0] == 1
    assert generator.generate([], seed=0, **FAST).shape == (0, 1, 16, 16, 16)
    with pytest.raises(LabelError, match="GBM"):
        generator.generate("GBM", n=1)
    with pytest.raises(LabelError):
        generator.generate(["HGG", "LGG"], n=3)


def test_per_sample_seeds_do_not_depend_on_batching(tiny_model_dir):
    generator = TumorGenerator.from_pretrained(tiny_model_dir, device="cpu")
    labels = ["HGG", "LGG", "HGG", "LGG", "HGG"]
    seeds = [4, 3, 2, 1, 0]
    whole = generator.generate(labels, seed=seeds, batch_size=5, **FAST)
    ones = generator.generate(labels, seed=seeds, batch_size=1, **FAST)
    pairs = generator.generate(labels, seed=seeds, batch_size=2, **FAST)
    assert torch.allclose(whole, ones, atol=1e-5) and torch.allclose(whole, pairs, atol=1e-5)
    alone = generator.generate(["HGG"], seed=[2], **FAST)
    assert torch.allclose(whole[2], alone[0], atol=1e-5)
    # an int seed: a fixed per-sample sequence, so shorter runs are prefixes of longer ones
    long = generator.generate("LGG", n=4, seed=7, batch_size=3, **FAST)
    short = generator.generate("LGG", n=2, seed=7, **FAST)
    assert torch.allclose(long[:2], short, atol=1e-5)
    assert not torch.allclose(long[0], long[1])
    other = generator.generate("LGG", n=2, seed=8, **FAST)
    assert not torch.allclose(short, other)
    with pytest.raises(ValueError, match="seeds"):
        generator.generate(["HGG", "LGG"], seed=[1])


def test_picklable_before_and_after_loading(tiny_model_dir):
    generator = TumorGenerator.from_pretrained(tiny_model_dir, device="cpu")
    before = pickle.loads(pickle.dumps(generator))
    assert not before.is_loaded
    reference = generator.generate("HGG", n=2, seed=1, **FAST)
    payload = pickle.dumps(generator)
    assert len(payload) < 20_000  # the path and configs, not the weights
    after = pickle.loads(payload)
    assert not after.is_loaded  # workers reload lazily
    assert torch.allclose(after.generate("HGG", n=2, seed=1, **FAST), reference, atol=1e-6)
    assert torch.allclose(before.generate("HGG", n=2, seed=1, **FAST), reference, atol=1e-6)


def test_save_pretrained_layout_and_round_trip(tmp_path):
    torch.manual_seed(0)
    tokenizer = VQGAN3D(TokenizerConfig.preset("tiny"))
    transformer = MaskedTransformer(TransformerConfig.preset("tiny", dim=32, depth=1))
    live = TumorGenerator(tokenizer, transformer, device="cpu")
    assert live.is_loaded
    copy = pickle.loads(pickle.dumps(live))  # live models travel with their weights
    reference = live.generate(["HGG", "LGG"], seed=3, **FAST)
    assert torch.allclose(copy.generate(["HGG", "LGG"], seed=3, **FAST), reference, atol=1e-6)
    folder = live.save_pretrained(tmp_path / "model")
    names = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert {
        "tumoraug.json",
        "tokenizer/config.json",
        "tokenizer/model.safetensors",
        "generator/config.json",
        "generator/model.safetensors",
    } <= names
    manifest = json.loads((folder / "tumoraug.json").read_text())
    assert manifest["model_type"] == "tumor_generator" and manifest["roi_size"] == 16
    loaded = TumorGenerator.from_pretrained(folder, device="cpu")
    assert torch.allclose(loaded.generate(["HGG", "LGG"], seed=3, **FAST), reference, atol=1e-6)


def test_clear_errors_for_bad_folders(tmp_path, tiny_model_dir):
    with pytest.raises(CheckpointError, match="no such checkpoint folder"):
        TumorGenerator.from_pretrained(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"tumoraug\.json"):
        TumorGenerator.from_pretrained(tmp_path / "empty")
    tokenizer = VQGAN3D(TokenizerConfig.preset("tiny"))
    wrong = MaskedTransformer(TransformerConfig.preset("tiny", codebook_size=32, dim=32, depth=1))
    with pytest.raises(CheckpointError, match="codebook_size"):
        TumorGenerator(tokenizer, wrong, device="cpu")


def test_hub_id_offline_from_local_cache(tiny_model_dir, hub_cache):
    hub_cache(tiny_model_dir, "someone/tiny-tumors")
    generator = TumorGenerator.from_pretrained("someone/tiny-tumors", device="cpu")
    local = TumorGenerator.from_pretrained(tiny_model_dir, device="cpu")
    out = generator.generate("LGG", n=1, seed=0, **FAST)
    assert torch.allclose(out, local.generate("LGG", n=1, seed=0, **FAST), atol=1e-6)
    with pytest.raises(CheckpointError, match="local Hub cache"):
        TumorGenerator.from_pretrained("someone/not-cached")
