"""TumorGenerator: lazy loading, label forms, per-sample seeds, batch invariance, pickling,
folders and their format version, Hub cache."""

from __future__ import annotations

import json
import pickle
import shutil

import pytest
import torch

from tumoraug import SamplingConfig, TumorGenerator
from tumoraug.config import TokenizerConfig, TransformerConfig
from tumoraug.errors import CheckpointError, ConfigError, LabelError
from tumoraug.models.transformer import MaskedTransformer
from tumoraug.models.vqgan import VQGAN3D

FAST = dict(sampling=SamplingConfig(steps=2))


def test_from_pretrained_reads_only_configs(tiny_model_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "transformer" / "model.safetensors").write_bytes(b"not weights")
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
    # bit-identical: tokens come from per-sample rngs, each grid is decoded on its own
    assert torch.equal(whole, ones) and torch.equal(whole, pairs)
    alone = generator.generate(["HGG"], seed=[2], **FAST)
    assert torch.equal(whole[2], alone[0])
    # generate is volumes with derived seeds; volumes takes int labels or grades
    assert torch.equal(generator.volumes([1, 0, 1, 0, 1], seeds, batch_size=3, **FAST), whole)
    # an int seed: a fixed per-sample sequence, so shorter runs are prefixes of longer ones
    long = generator.generate("LGG", n=4, seed=7, batch_size=3, **FAST)
    short = generator.generate("LGG", n=2, seed=7, **FAST)
    assert torch.equal(long[:2], short)
    assert not torch.allclose(long[0], long[1])
    other = generator.generate("LGG", n=2, seed=8, **FAST)
    assert not torch.allclose(short, other)
    with pytest.raises(ConfigError, match="seeds"):
        generator.generate(["HGG", "LGG"], seed=[1])
    with pytest.raises(ConfigError, match="batch_size"):
        generator.volumes([1], [0], batch_size=0)


def test_decode_is_batch_invariant(tiny_model_dir):
    generator = TumorGenerator.from_pretrained(tiny_model_dir, device="cpu")
    tokens = generator.generate_tokens([1, 0, 1], [5, 6, 7], SamplingConfig(steps=2))
    assert tokens.shape == (3, *generator.transformer_config.token_grid)
    together = generator.decode(tokens)
    assert together.shape == (3, 1, 16, 16, 16) and together.dtype == torch.float32
    for j in range(3):
        assert torch.equal(generator.decode(tokens[j : j + 1])[0], together[j])
    assert generator.decode(tokens[:0]).shape == (0, 1, 16, 16, 16)


def test_sampling_settings_come_as_a_config_or_overrides(tiny_model_dir):
    generator = TumorGenerator.from_pretrained(tiny_model_dir, device="cpu")
    default = generator.generate("HGG", n=1, seed=0, sampling=SamplingConfig(steps=2))
    other = generator.generate("HGG", n=1, seed=0, sampling=SamplingConfig(steps=3))
    assert not torch.equal(default, other)  # the settings reach the sampler
    overrides = generator.generate("HGG", n=1, seed=0, sampling={"steps": 2})
    assert torch.equal(default, overrides)  # a dict overrides the defaults' fields
    with pytest.raises(ConfigError, match="no sampling setting scheduler"):
        generator.generate("HGG", n=1, sampling={"scheduler": "ddim"})
    with pytest.raises(ConfigError, match="SamplingConfig"):
        generator.generate("HGG", n=1, sampling=[2])
    with pytest.raises(TypeError):
        generator.generate("HGG", n=1, steps=2)


def test_picklable_before_and_after_loading(tiny_model_dir):
    generator = TumorGenerator.from_pretrained(tiny_model_dir, device="cpu")
    before = pickle.loads(pickle.dumps(generator))
    assert not before.is_loaded
    reference = generator.generate("HGG", n=2, seed=1, **FAST)
    payload = pickle.dumps(generator)
    assert len(payload) < 20_000  # the path and configs, not the weights
    after = pickle.loads(payload)
    assert not after.is_loaded  # workers reload lazily
    assert torch.equal(after.generate("HGG", n=2, seed=1, **FAST), reference)
    assert torch.equal(before.generate("HGG", n=2, seed=1, **FAST), reference)


def test_save_pretrained_layout_and_round_trip(tmp_path):
    torch.manual_seed(0)
    tokenizer = VQGAN3D(TokenizerConfig.preset("tiny"))
    transformer = MaskedTransformer(TransformerConfig.preset("tiny", dim=32, depth=1))
    live = TumorGenerator(tokenizer, transformer, device="cpu")
    assert live.is_loaded
    copy = pickle.loads(pickle.dumps(live))  # live models travel with their weights
    reference = live.generate(["HGG", "LGG"], seed=3, **FAST)
    assert torch.equal(copy.generate(["HGG", "LGG"], seed=3, **FAST), reference)
    folder = live.save_pretrained(tmp_path / "model")
    names = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert {
        "tumoraug.json",
        "tokenizer/config.json",
        "tokenizer/model.safetensors",
        "transformer/config.json",
        "transformer/model.safetensors",
    } <= names
    assert not any(name.startswith("generator/") for name in names)
    manifest = json.loads((folder / "tumoraug.json").read_text())
    assert manifest["model_type"] == "tumor_generator" and manifest["roi_size"] == 16
    assert manifest["format_version"] == 2
    loaded = TumorGenerator.from_pretrained(folder, device="cpu")
    assert loaded.transformer_config == live.transformer_config
    assert loaded.tokenizer_config == live.tokenizer_config
    assert torch.equal(loaded.generate(["HGG", "LGG"], seed=3, **FAST), reference)


def test_older_and_newer_folder_formats_are_clear_errors(tiny_model_dir, tmp_path):
    old = tmp_path / "format1"
    shutil.copytree(tiny_model_dir, old)
    (old / "transformer").rename(old / "generator")
    manifest = json.loads((old / "tumoraug.json").read_text())
    (old / "tumoraug.json").write_text(json.dumps({**manifest, "format_version": 1}))
    with pytest.raises(CheckpointError, match=r"older tumoraug .* must be re-saved"):
        TumorGenerator.from_pretrained(old)
    new = tmp_path / "format3"
    shutil.copytree(tiny_model_dir, new)
    (new / "tumoraug.json").write_text(json.dumps({**manifest, "format_version": 3}))
    with pytest.raises(CheckpointError, match="newer"):
        TumorGenerator.from_pretrained(new)


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
    assert torch.equal(out, local.generate("LGG", n=1, seed=0, **FAST))
    with pytest.raises(CheckpointError, match="local Hub cache"):
        TumorGenerator.from_pretrained("someone/not-cached")
