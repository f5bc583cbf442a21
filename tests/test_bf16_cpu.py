"""The bf16 path without a GPU: ``cpu_bf16`` runs on the CPU what CUDA runs under bf16
autocast (both training stages, resume, sampling, decoding, corpus encoding)."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from safetensors.torch import load_file

from tumoraug import SamplingConfig, TumorGenerator
from tumoraug.config import TokenizerConfig, TransformerConfig
from tumoraug.device import autocast
from tumoraug.errors import ConfigError, DataError
from tumoraug.models.transformer import MaskedTransformer
from tumoraug.models.vqgan import VQGAN3D, VectorQuantizer
from tumoraug.training.config import TrainConfig
from tumoraug.training.corpus import TokenCorpus, encode_corpus
from tumoraug.training.tokenizer import TokenizerRecipe, train_tokenizer
from tumoraug.training.transformer import train_transformer

CPU = torch.device("cpu")
FAST = SamplingConfig(steps=2)


def rois(n: int = 4) -> list[tuple[torch.Tensor, int]]:
    """Random 16³ ROIs as ``(image, label)`` pairs, grades alternating."""
    g = torch.Generator().manual_seed(3)
    return [(torch.rand(1, 16, 16, 16, generator=g) * 2 - 1, i % 2) for i in range(n)]


def corpus(n: int = 8) -> TokenCorpus:
    g = torch.Generator().manual_seed(0)
    return TokenCorpus(
        torch.randint(64, (n, 4, 4, 4), generator=g),
        torch.rand(n, 4, 4, 4, generator=g),
        torch.arange(n) % 2,
        64,
    )


def record_dtypes(module: torch.nn.Module) -> list[torch.dtype]:
    """Output dtypes of ``module``'s forward calls, appended as they happen."""
    seen: list[torch.dtype] = []
    module.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    return seen


def checkpoint(run_dir, step: int, name: str) -> dict[str, torch.Tensor]:
    path = run_dir / "checkpoints" / f"step_{step:08d}" / name / "model.safetensors"
    return load_file(str(path))


def losses(run_dir) -> list[float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [v for line in lines for k, v in json.loads(line).items() if k.startswith("loss/")]


def test_autocast_is_bf16_on_the_cpu_only_when_asked():
    a = torch.ones(2, 2)
    with autocast(CPU):
        assert (a @ a).dtype == torch.float32  # "auto": float32 on the CPU, as before
    with autocast(CPU, cpu_bf16=True):
        assert (a @ a).dtype == torch.bfloat16
    with autocast(CPU, enabled=False, cpu_bf16=True):
        assert (a @ a).dtype == torch.float32


def test_train_config_cpu_bf16_needs_mixed_precision():
    assert TrainConfig().cpu_bf16 is False
    with pytest.raises(ConfigError, match=r"TrainConfig\.cpu_bf16: expected False when"):
        TrainConfig(mixed_precision=False, cpu_bf16=True)
    with pytest.raises(ConfigError, match=r"TrainConfig\.cpu_bf16: expected a bool"):
        TrainConfig(cpu_bf16="yes")


def test_tokenizer_trains_and_resumes_under_cpu_bf16(tmp_path, monkeypatch):
    config = TokenizerConfig.preset("tiny")
    recipe = TokenizerRecipe.preset("tiny", disc_start=1, restart_every=0)  # GAN from step 2
    options = dict(batch_size=2, seed=1, log_every=1, checkpoint_every=1, device="cpu")
    seen: list[torch.dtype] = []
    build = VQGAN3D.__init__

    def build_and_watch(self, *args, **kwargs):
        build(self, *args, **kwargs)
        self.decoder.conv_out.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))

    monkeypatch.setattr(VQGAN3D, "__init__", build_and_watch)
    for out, steps in (("full", 3), ("cut", 2), ("cut", 3)):
        run = TrainConfig.preset("tokenizer", steps=steps, cpu_bf16=True, **options)
        result = train_tokenizer(config, rois(), tmp_path / out, run, recipe, progress=False)
    assert result.resumed_from == 2
    assert seen and set(seen) == {torch.bfloat16}  # the decoder ran in bf16 at every step
    assert all(torch.isfinite(torch.tensor(losses(tmp_path / "full"))))
    full = checkpoint(tmp_path / "full", 3, "tokenizer")
    cut = checkpoint(tmp_path / "cut", 3, "tokenizer")
    for key, value in full.items():
        if value.is_floating_point():
            assert value.dtype == torch.float32, key
        assert torch.equal(value, cut[key]), key  # resume is exact under bf16 too
    before = checkpoint(tmp_path / "cut", 2, "tokenizer")["decoder.conv_out.weight"]
    assert not torch.equal(full["decoder.conv_out.weight"], before)


def test_transformer_trains_and_resumes_under_cpu_bf16(tmp_path):
    config = TransformerConfig.preset("tiny", dim=32, depth=1, heads=4)
    options = dict(batch_size=4, device="cpu", log_every=1, checkpoint_every=1, cpu_bf16=True)
    for out, steps in (("full", 3), ("cut", 2), ("cut", 3)):
        train = TrainConfig(steps=steps, **options)
        result = train_transformer(config, corpus(), tmp_path / out, train, progress=False)
    assert result.resumed_from == 2
    assert all(torch.isfinite(torch.tensor(losses(tmp_path / "full"))))
    full = MaskedTransformer.from_pretrained(tmp_path / "full" / "transformer")
    cut = MaskedTransformer.from_pretrained(tmp_path / "cut" / "transformer")
    fresh = checkpoint(tmp_path / "cut", 2, "transformer")
    for (name, a), b in zip(full.state_dict().items(), cut.state_dict().values(), strict=True):
        assert a.dtype == torch.float32 and torch.equal(a, b), name
    assert not torch.equal(full.state_dict()["head.weight"], fresh["head.weight"])
    seen = record_dtypes(full.head)
    with autocast(CPU, cpu_bf16=True):
        full(corpus().tokens[:1], torch.tensor([1]))
    assert seen == [torch.bfloat16]


def test_cpu_bf16_is_part_of_the_run_record_and_old_records_resume(tmp_path):
    config = TransformerConfig.preset("tiny", dim=32, depth=1, heads=4)
    options = dict(batch_size=4, device="cpu", checkpoint_every=1)
    train_transformer(config, corpus(), tmp_path, TrainConfig(steps=1, **options), progress=False)
    with pytest.raises(ConfigError, match=r"train\.cpu_bf16 was False, now True"):
        train_transformer(
            config, corpus(), tmp_path, TrainConfig(steps=2, cpu_bf16=True, **options),
            progress=False,
        )  # fmt: skip
    record = tmp_path / "checkpoints" / "step_00000001" / "run.json"
    saved = json.loads(record.read_text())
    del saved["train"]["cpu_bf16"]  # a record written before the field existed
    record.write_text(json.dumps(saved))
    result = train_transformer(
        config, corpus(), tmp_path, TrainConfig(steps=2, **options), progress=False
    )
    assert result.resumed_from == 1


def test_sampling_under_cpu_bf16_is_valid_float32_and_seeded(tiny_model_dir):
    generator = TumorGenerator.from_pretrained(tiny_model_dir, device="cpu", cpu_bf16=True)
    assert generator.cpu_bf16 and pickle.loads(pickle.dumps(generator)).cpu_bf16
    head, conv_out = generator.transformer.head, generator.tokenizer.decoder.conv_out
    head_dtypes, decoder_dtypes = record_dtypes(head), record_dtypes(conv_out)
    tokens = generator.generate_tokens([1, 0], [5, 6], FAST)
    codebook = generator.tokenizer_config.codebook_size
    assert tokens.dtype == torch.int64 and tokens.shape == (2, 4, 4, 4)
    assert int(tokens.min()) >= 0 and int(tokens.max()) < codebook
    assert torch.equal(tokens, generator.generate_tokens([1, 0], [5, 6], FAST))
    volumes = generator.generate(["HGG", "LGG"], seed=7, sampling=FAST)
    assert volumes.dtype == torch.float32 and volumes.shape == (2, 1, 16, 16, 16)
    assert not volumes.requires_grad
    assert float(volumes.min()) >= -1 and float(volumes.max()) <= 1
    assert torch.equal(volumes, generator.generate(["HGG", "LGG"], seed=7, sampling=FAST))
    assert set(head_dtypes) == {torch.bfloat16} and set(decoder_dtypes) == {torch.bfloat16}
    plain = TumorGenerator.from_pretrained(tiny_model_dir, device="cpu")
    plain_dtypes = record_dtypes(plain.tokenizer.decoder.conv_out)
    plain.generate("HGG", n=1, sampling=FAST)
    assert not plain.cpu_bf16 and set(plain_dtypes) == {torch.float32}  # the default


def test_sampling_skips_the_id_check_and_user_ids_are_still_checked(tiny_model_dir, monkeypatch):
    generator = TumorGenerator.from_pretrained(tiny_model_dir, device="cpu", cpu_bf16=True)
    calls: list[bool] = []
    real = VectorQuantizer.check_tokens

    def spy(self, tokens, *, ids=True):
        calls.append(ids)
        real(self, tokens, ids=ids)

    monkeypatch.setattr(VectorQuantizer, "check_tokens", spy)
    generator.generate("HGG", n=2, sampling=FAST)
    assert calls == [False, False]  # one per decoded grid, none of them a host sync
    calls.clear()
    generator.decode(torch.zeros(3, 4, 4, 4, dtype=torch.long))
    assert calls == [True, False, False, False]  # a user's grids: checked once per batch
    bad = torch.full((1, 4, 4, 4), 64)
    with pytest.raises(DataError, match=r"ids must be in \[0, 64\), got \[64, 64\]"):
        generator.decode(bad)
    with pytest.raises(DataError, match=r"ids must be in \[0, 64\), got \[-1, 0\]"):
        generator.tokenizer.decode(torch.tensor([-1, 0]).repeat(32).reshape(1, 4, 4, 4))
    with pytest.raises(DataError, match="expected an integer tensor"):
        generator.tokenizer.decode(bad.float(), check_ids=False)


def test_encode_corpus_under_cpu_bf16():
    torch.manual_seed(0)
    tokenizer = VQGAN3D(TokenizerConfig.preset("tiny"))
    seen = record_dtypes(tokenizer.encoder.conv_out)
    encoded = encode_corpus(tokenizer, rois(2), device="cpu", cpu_bf16=True)
    assert seen == [torch.bfloat16]
    assert encoded.tokens.dtype == torch.int64 and encoded.importance.dtype == torch.float32
    assert int(encoded.tokens.min()) >= 0 and int(encoded.tokens.max()) < 64


@pytest.mark.parametrize("command", ["generate", "evaluate-samples"])
def test_cli_cpu_bf16_opens_the_generator_under_bf16(command, tiny_model_dir, roi_cache, tmp_path):
    from typer.testing import CliRunner

    import tumoraug.generators
    from tumoraug.cli import app

    opened = []
    real = tumoraug.generators.open_generator

    def watch(*args, **kwargs):
        opened.append(kwargs.get("cpu_bf16"))
        return real(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tumoraug.generators, "open_generator", watch)
        patch.setattr("tumoraug.export.open_generator", watch)
        model = ["--model", str(tiny_model_dir), "--steps", "2", "--device", "cpu", "--cpu-bf16"]
        if command == "generate":
            args = ["generate", "--label", "HGG", "--n", "1", "--out", str(tmp_path / "g"), *model]
        else:
            args = ["evaluate-samples", "--data", str(roi_cache), "--n", "2", *model]
            args += ["--out", str(tmp_path / "e")]
        result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert opened == [True]
