"""Stage-2 training: token corpus re-use, class dropout, exact resume, the 16³ pipeline."""

from __future__ import annotations

import json

import pytest
import torch

from tumoraug import TumorGenerator
from tumoraug.config import TokenizerConfig, TransformerConfig
from tumoraug.errors import ConfigError, DataError
from tumoraug.models.transformer import MaskedTransformer, build_transformer
from tumoraug.models.vqgan import VQGAN3D
from tumoraug.sampling import SamplingConfig
from tumoraug.training.config import TrainConfig
from tumoraug.training.corpus import TokenCorpus, encode_corpus
from tumoraug.training.loop import StepContext
from tumoraug.training.transformer import (
    TransformerRecipe,
    TransformerTask,
    train_transformer,
)

TINY = dict(dim=32, depth=1, heads=4)


class ROIs(torch.utils.data.Dataset):
    """Random 16³ ROIs as (image, label) pairs, with a manifest like ROIDataset's."""

    def __init__(self, n: int = 4, version: int = 0) -> None:
        g = torch.Generator().manual_seed(version)
        self.images = torch.rand(n, 1, 16, 16, 16, generator=g) * 2 - 1
        self.manifest = {"version": version, "n": n}

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.images[i], i % 2


def run_recipe(run_dir):
    """The recipe a run was trained with, from its newest checkpoint's training state."""
    from tumoraug.checkpoint import load_state
    from tumoraug.training.checkpoints import latest_checkpoint

    return load_state(latest_checkpoint(run_dir))["run"]["recipe"]


def random_corpus(n: int = 8, grid=(4, 4, 4), codebook: int = 64) -> TokenCorpus:
    g = torch.Generator().manual_seed(0)
    return TokenCorpus(
        torch.randint(codebook, (n, *grid), generator=g),
        torch.rand(n, *grid, generator=g),
        torch.arange(n) % 2,
        codebook,
    )


def test_encode_corpus_shapes_and_reuse(tmp_path, monkeypatch):
    torch.manual_seed(0)
    tokenizer = VQGAN3D(TokenizerConfig.preset("tiny"))
    data = ROIs()
    path = tmp_path / "corpus.safetensors"
    corpus = encode_corpus(tokenizer, data, path, batch_size=3, device="cpu")
    assert corpus.tokens.shape == (4, 4, 4, 4) and corpus.importance.shape == (4, 4, 4, 4)
    assert corpus.labels.tolist() == [0, 1, 0, 1] and corpus.codebook_size == 64
    assert path.is_file() and corpus.key
    expected = tokenizer.encode(data.images)[0]
    assert torch.equal(corpus.tokens, expected)

    def no_encoding(*args, **kwargs):
        raise AssertionError("the tokenizer ran although the corpus was up to date")

    monkeypatch.setattr(tokenizer, "encode", no_encoding)
    again = encode_corpus(tokenizer, data, path, device="cpu")
    assert torch.equal(again.tokens, corpus.tokens) and again.key == corpus.key
    monkeypatch.undo()
    changed = encode_corpus(tokenizer, ROIs(version=1), path, device="cpu")  # new manifest
    assert changed.key != corpus.key
    with torch.no_grad():
        tokenizer.quantizer.codebook.mul_(-1)  # new weights
    assert encode_corpus(tokenizer, ROIs(version=1), path, device="cpu").key != changed.key
    with pytest.raises(DataError, match="not a tumoraug token corpus"):
        (tmp_path / "bad.safetensors").write_bytes(b"garbage")
        TokenCorpus.load(tmp_path / "bad.safetensors")


def context(step: int = 0, model=None) -> StepContext:
    modules = {"transformer": model}
    return StepContext(step, 0, torch.device("cpu"), 0, 1, 0, modules, modules)


@pytest.mark.parametrize(("dropout", "expected_null"), [(0.0, 0), (1.0, 8)])
def test_class_dropout_sends_the_null_class(dropout, expected_null):
    config = TransformerConfig.preset("tiny", **TINY)
    model = MaskedTransformer(config)
    recipe = TransformerRecipe(class_dropout=dropout)
    seen = []
    model.register_forward_hook(lambda m, args, out: seen.append(args[1].tolist()))
    corpus = random_corpus()
    batch = (corpus.tokens, corpus.importance, corpus.labels)
    out = TransformerTask(model, recipe, lr=1e-3).training_step(batch, context(model=model))
    assert sum(label == config.null_class for label in seen[0]) == expected_null
    loss = out.losses["transformer"]
    assert torch.isfinite(loss) and loss.requires_grad
    assert 0 < float(out.metrics["corrupted_fraction"]) <= 1


def test_loss_is_cross_entropy_on_corrupted_positions_only():
    config = TransformerConfig.preset("tiny", **TINY)
    model = MaskedTransformer(config)
    task = TransformerTask(model, TransformerRecipe(masking="random", class_dropout=0.0), lr=1e-3)
    corpus = random_corpus(4)
    batch = (corpus.tokens, corpus.importance, corpus.labels)
    logits_seen = []
    model.register_forward_hook(lambda m, args, out: logits_seen.append((args[0], out)))
    loss = task.training_step(batch, context(model=model)).losses["transformer"]
    corrupted, logits = logits_seen[0]
    where = corrupted == config.mask_id  # random mode corrupts by masking only
    manual = torch.nn.functional.cross_entropy(logits[where], corpus.tokens[where])
    assert torch.allclose(loss, manual)


def test_minority_grade_weighs_as_much_as_the_majority_and_is_logged_per_grade():
    config = TransformerConfig.preset("tiny", **TINY)
    model = MaskedTransformer(config)
    recipe = TransformerRecipe(masking="random", class_dropout=0.0)
    corpus = random_corpus(4)
    labels = torch.tensor([1, 1, 1, 0])  # 3 HGG : 1 LGG
    batch = (corpus.tokens, corpus.importance, labels)
    logits_seen = []
    model.register_forward_hook(lambda m, args, out: logits_seen.append((args[0], out)))
    task = TransformerTask(model, recipe, lr=1e-3, class_counts=[1, 3])
    out = task.training_step(batch, context(model=model))
    corrupted, logits = logits_seen[0]
    where = corrupted == config.mask_id
    per_token = torch.nn.functional.cross_entropy(
        logits[where], corpus.tokens[where], reduction="none"
    )
    weight = torch.tensor([2.0, 2 / 3])[labels[:, None, None, None].expand_as(where)[where]]
    assert torch.allclose(out.losses["transformer"], (per_token * weight).sum() / weight.sum())
    assert {"accuracy", "accuracy/LGG", "accuracy/HGG", "masked_fraction"} <= set(out.metrics)
    even = TransformerTask(model, recipe.replace(balance_classes=False), lr=1e-3)
    assert torch.equal(even.class_weights, torch.ones(2))


def test_training_writes_metrics_and_resumes_exactly(tmp_path):
    corpus = random_corpus()
    config = TransformerConfig.preset("tiny", **TINY)
    options = dict(batch_size=4, device="cpu", log_every=1, checkpoint_every=2)
    for out, steps in (("full", 4), ("split", 2), ("split", 4)):
        train = TrainConfig(steps=steps, **options)
        result = train_transformer(config, corpus, tmp_path / out, train, progress=False)
    assert result.resumed_from == 2
    full = MaskedTransformer.from_pretrained(tmp_path / "full" / "transformer")
    split = MaskedTransformer.from_pretrained(tmp_path / "split" / "transformer")
    for (name, a), b in zip(full.state_dict().items(), split.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    lines = (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert {"loss/transformer", "accuracy"} <= set(records[0])
    assert full.config.token_grid == (4, 4, 4) and full.config.codebook_size == 64
    assert not (tmp_path / "full" / "tumoraug.json").exists()  # no tokenizer known


def test_validation_is_logged_repeatable_and_leaves_training_unchanged(tmp_path):
    corpus, held_out = random_corpus(), random_corpus(n=6)
    held_out.tokens = held_out.tokens.flip(0)
    config = TransformerConfig.preset("tiny", **TINY)
    train = TrainConfig(steps=4, batch_size=4, device="cpu", log_every=2, checkpoint_every=2)
    plain = train_transformer(config, corpus, tmp_path / "plain", train, progress=False)
    held_out.save(tmp_path / "held_out.safetensors")
    scored = train_transformer(
        config, corpus, tmp_path / "scored", train, progress=False,
        validation=tmp_path / "held_out.safetensors",
    )  # fmt: skip
    a = MaskedTransformer.from_pretrained(tmp_path / "plain" / "transformer").state_dict()
    b = MaskedTransformer.from_pretrained(tmp_path / "scored" / "transformer").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # scoring held-out grids changes nothing
    records = [json.loads(line) for line in (tmp_path / "scored" / "metrics.jsonl").open()]
    assert [r["step"] for r in records] == [2, 4]
    assert {"val_loss", "val_accuracy", "val_accuracy/LGG", "val_accuracy/HGG"} <= set(records[0])
    assert "val_loss" not in json.loads((tmp_path / "plain" / "metrics.jsonl").open().readline())
    assert plain.step == scored.step == 4
    model = MaskedTransformer.from_pretrained(tmp_path / "scored" / "transformer")
    task = TransformerTask(model, TransformerRecipe(), lr=1e-3, validation=held_out)
    first, again = (
        task.validate(model, torch.device("cpu")),
        task.validate(model, torch.device("cpu")),
    )
    assert first == again and first["val_loss"] == pytest.approx(records[-1]["val_loss"], rel=1e-5)
    with pytest.raises(ConfigError, match="do not match the training corpus"):
        train_transformer(
            config, corpus, tmp_path / "x", train, validation=random_corpus(grid=(2, 2, 2))
        )
    with pytest.raises(ConfigError, match="encoded with the tokenizer"):
        train_transformer(config, corpus, tmp_path / "y", train, validation=tmp_path / "nowhere")


class AlwaysZero(torch.nn.Module):
    """A stand-in transformer that predicts code 0 everywhere."""

    def __init__(self, config):
        super().__init__()
        self.config = config

    def forward(self, tokens, labels):
        logits = torch.zeros(*tokens.shape, self.config.codebook_size)
        logits[..., 0] = 1.0
        return logits


def test_validation_per_grade_means_cover_every_batch():
    """Grades sorted across validation batches (the second holds LGG only): each grade's
    accuracy is over all of its tokens, so a model that is always right scores 1 in both."""
    corpus = random_corpus(n=40)
    corpus.tokens = torch.zeros_like(corpus.tokens)
    corpus.labels = torch.tensor([1] * 20 + [0] * 20)
    model = AlwaysZero(TransformerConfig.preset("tiny", **TINY, codebook_size=64))
    task = TransformerTask(model, TransformerRecipe(), lr=1e-3, validation=corpus)
    scores = task.validate(model, torch.device("cpu"))
    assert scores["val_accuracy"] == scores["val_accuracy/LGG"] == scores["val_accuracy/HGG"] == 1


def test_bad_inputs(tmp_path):
    with pytest.raises(ConfigError, match="TokenCorpus"):
        train_transformer("tiny", 42, tmp_path)
    tokenizer = VQGAN3D(TokenizerConfig.preset("tiny", codebook_size=32))
    with pytest.raises(ConfigError, match="codebook_size"):
        train_transformer(
            "tiny", random_corpus(), tmp_path, TrainConfig(steps=1), tokenizer=tokenizer
        )
    model = build_transformer(TransformerConfig.preset("tiny", **TINY).baseline())
    with pytest.raises(ConfigError, match="class_dropout"):
        TransformerTask(model, TransformerRecipe(class_dropout=0.1), lr=1e-3)


def test_pipeline_16_cubed_runs_in_seconds(tmp_path):
    """Phantoms -> ROI cache -> tokenizer -> corpus -> generator -> TumorGenerator -> ROIs."""
    from tumoraug.data import preprocess, write_phantom_dataset
    from tumoraug.training.tokenizer import train_tokenizer

    write_phantom_dataset(tmp_path / "raw", per_class=2, seed=0, shape=(32, 32, 32))
    preprocess(tmp_path / "raw", tmp_path / "cache", size=16)
    quiet = dict(batch_size=2, device="cpu")
    stage1 = TrainConfig.preset("tokenizer", steps=1, image_every=0, **quiet)
    train_tokenizer("tiny", tmp_path / "cache", tmp_path / "stage1", stage1, progress=False)
    train_transformer(
        TransformerConfig.preset("tiny", **TINY),
        (tmp_path / "stage1" / "tokenizer", tmp_path / "cache"),
        tmp_path / "model",
        TrainConfig(steps=2, image_every=2, **quiet),
        progress=False,
    )
    assert (tmp_path / "model" / "corpus.safetensors").is_file()
    assert (tmp_path / "model" / "samples" / "step_00000002.png").is_file()
    generator = TumorGenerator.from_pretrained(tmp_path / "model", device="cpu")
    rois = generator.generate(["HGG", "LGG"], seed=0, sampling=SamplingConfig(steps=2))
    assert rois.shape == (2, 1, 16, 16, 16)
    assert float(rois.abs().max()) <= 1.0


def test_cli_train_transformer_then_generate(tmp_path):
    from typer.testing import CliRunner

    from tumoraug.cli import app

    runner = CliRunner()
    random_corpus().save(tmp_path / "corpus.safetensors")
    VQGAN3D(TokenizerConfig.preset("tiny")).save_pretrained(tmp_path / "tokenizer")
    result = runner.invoke(app, [
        "train-transformer", "--data", str(tmp_path / "corpus.safetensors"), "--tokenizer",
        str(tmp_path / "tokenizer"), "--out", str(tmp_path / "model"), "--preset", "tiny",
        "--steps", "2", "--batch-size", "4", "--device", "cpu", "--masking", "random",
        "--validation", str(tmp_path / "corpus.safetensors"), "--lr-schedule", "cosine",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert run_recipe(tmp_path / "model")["masking"] == "random"
    last = json.loads((tmp_path / "model" / "metrics.jsonl").read_text().splitlines()[-1])
    assert "val_accuracy" in last and last["lr"] == pytest.approx(TrainConfig().lr * 0.1)
    generated = runner.invoke(app, [
        "generate", "--model", str(tmp_path / "model"), "--label", "LGG", "--n", "1", "--out",
        str(tmp_path / "rois"), "--steps", "2", "--device", "cpu",
    ])  # fmt: skip
    assert generated.exit_code == 0, generated.output
    baseline = runner.invoke(app, [
        "train-transformer", "--data", str(tmp_path / "corpus.safetensors"), "--tokenizer",
        str(tmp_path / "tokenizer"), "--out", str(tmp_path / "baseline"), "--preset", "tiny",
        "--steps", "2", "--batch-size", "4", "--device", "cpu", "--baseline",
    ])  # fmt: skip
    assert baseline.exit_code == 0, baseline.output
    config = MaskedTransformer.load_config(tmp_path / "baseline" / "transformer")
    assert config.conditioning == "per_class"
    assert run_recipe(tmp_path / "baseline") == TransformerRecipe().baseline().to_dict()
    guided = TumorGenerator.from_pretrained(tmp_path / "baseline", device="cpu")
    sampling = SamplingConfig(steps=2, guidance_scale=1.5)
    rois = guided.generate(["HGG", "LGG"], seed=0, sampling=sampling)
    assert rois.shape == (2, 1, 16, 16, 16)  # guidance is skipped: no unconditional model
    nothing = runner.invoke(app, ["train-transformer", "--out", str(tmp_path / "x")])
    assert nothing.exit_code == 1 and "give the data" in nothing.output
    args = ["train-transformer", "--out", str(tmp_path / "x"), "--data", str(tmp_path)]
    folder = runner.invoke(app, args)
    assert folder.exit_code == 1 and "needs the trained tokenizer" in folder.output
