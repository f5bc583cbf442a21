import json

import pytest
import torch

from tumoraug.checkpoint import CONFIG_NAME, WEIGHTS_NAME
from tumoraug.config import TokenizerConfig
from tumoraug.errors import CheckpointError, ConfigError, DataError
from tumoraug.models.vqgan import VQGAN3D, VectorQuantizer


@pytest.fixture
def tiny() -> VQGAN3D:
    torch.manual_seed(0)
    return VQGAN3D(TokenizerConfig.preset("tiny"))


def roi(batch=2, size=16, seed=0):
    return (
        torch.rand(batch, 1, size, size, size, generator=torch.Generator().manual_seed(seed)) * 2
        - 1
    )


@pytest.mark.parametrize("size", [16, 32])
def test_tiny_shapes_and_ranges(tiny, size):
    x = roi(size=size)
    grid = size // tiny.config.downsample_factor
    out = tiny(x)
    assert out.reconstruction.shape == x.shape
    assert out.tokens.shape == out.importance.shape == (2, grid, grid, grid)
    tokens, importance = tiny.encode(x)
    assert tokens.dtype == torch.int64 and tokens.shape == (2, grid, grid, grid)
    assert torch.equal(tokens, out.tokens)
    assert ((importance > 0) & (importance < 1)).all()
    if size == tiny.config.roi_size:  # grade logits from the score-weighted features
        assert out.grade_logits.shape == (2, tiny.config.num_classes)
    else:  # the head is built for the configured grid; other sizes still encode
        assert out.grade_logits is None
    volume = tiny.decode(tokens)
    assert volume.shape == x.shape and volume.min() >= -1 and volume.max() <= 1
    assert torch.allclose(volume, out.reconstruction.clamp(-1, 1), atol=1e-5)


def test_tiny_is_small_and_brats128_matches_the_paper_grid():
    assert TokenizerConfig.preset("tiny").token_grid == (4, 4, 4)
    big = TokenizerConfig.preset("brats128")
    assert big.token_grid == (16, 16, 16) and big.downsample_factor == 8
    assert 1024 <= big.codebook_size <= 2048
    assert sum(p.numel() for p in VQGAN3D(TokenizerConfig.preset("tiny")).parameters()) < 30_000


def test_brats128_shapes_on_meta_device():
    config = TokenizerConfig.preset("brats128")
    with torch.device("meta"):
        model = VQGAN3D(config)
        x = torch.empty(2, 1, 128, 128, 128)
        out = model(x)
        tokens, importance = model.encode(x)
        volume = model.decode(tokens)
    assert out.reconstruction.shape == x.shape == volume.shape
    assert tokens.shape == importance.shape == (2, 16, 16, 16)
    assert out.z_e.shape == (2, config.embed_dim, 16, 16, 16)
    assert all(p.is_meta for p in model.parameters())


def test_straight_through_gradients_reach_the_encoder(tiny):
    out = tiny(roi())
    out.reconstruction.abs().mean().backward()  # the reconstruction loss alone
    grad = tiny.encoder.conv_in.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    assert tiny.quantizer.codebook.grad is None or tiny.quantizer.codebook.grad.abs().sum() == 0


def test_quantizer_loss_trains_the_codebook(tiny):
    out = tiny(roi())
    (out.codebook_loss + 0.25 * out.commitment_loss).backward()
    assert tiny.quantizer.codebook.grad.abs().sum() > 0


def test_importance_is_differentiable_from_features_and_from_tokens(tiny):
    out = tiny(roi())
    assert ((out.importance > 0) & (out.importance < 1)).all()
    out.importance.sum().backward()
    assert tiny.importance_head.out.weight.grad.abs().sum() > 0
    assert tiny.encoder.conv_in.weight.grad.abs().sum() > 0
    tokens = out.tokens.detach()
    tiny.zero_grad()
    tiny.importance(tokens).mean().backward()  # generated grids: code vectors stand in
    assert tiny.importance_head.conv.weight.grad.abs().sum() > 0


def test_classifier_scores_weight_the_grade_head_and_leave_the_decoder_alone():
    torch.manual_seed(0)
    model = VQGAN3D(TokenizerConfig.preset("tiny"))
    out = model(roi())
    torch.nn.functional.cross_entropy(out.grade_logits, torch.tensor([0, 1])).backward()
    assert model.importance_head.conv.weight.grad.abs().sum() > 0  # the scores learn from it
    assert model.decoder.conv_in.weight.grad is None  # the decoder does not see the scores
    tokens = out.tokens.detach()
    with torch.no_grad():
        model.importance_head.out.bias.fill_(50.0)
    assert torch.equal(model.decode(tokens), VQGAN3D.decode(model, tokens))
    z_q = model.quantizer.embed(tokens)
    assert torch.allclose(model.decode(tokens), model.decoder(z_q).clamp(-1, 1))


def test_gradient_checkpointing_gives_the_same_gradients(tiny):
    x = roi()
    tiny(x).reconstruction.sum().backward()
    expected = tiny.decoder.conv_in.weight.grad.clone()
    tiny.zero_grad()
    tiny.set_gradient_checkpointing(True)
    tiny(x).reconstruction.sum().backward()
    assert torch.allclose(tiny.decoder.conv_in.weight.grad, expected, atol=1e-5)


def test_dead_codes_restart_onto_encoder_outputs():
    quantizer = VectorQuantizer(8, 3).train()
    z = torch.randn(1, 3, 2, 2, 2)
    out = quantizer(z)
    used = set(out.tokens.flatten().tolist())
    restarted = quantizer.restart_dead_codes(z, torch.Generator().manual_seed(0))
    assert restarted == 8 - len(used)
    assert quantizer.usage.sum() == 0
    outputs = torch.nn.functional.normalize(z.movedim(1, -1).reshape(-1, 3), dim=1)
    for code in set(range(8)) - used:
        assert torch.isclose(outputs @ quantizer.codebook[code], torch.tensor(1.0)).any()
    assert 0 < out.fraction_used <= 1 and 1 <= out.perplexity <= 8


def test_bad_inputs_raise_clear_errors(tiny):
    with pytest.raises(DataError, match="expected \\(B, 1, D, H, W\\)"):
        tiny(torch.zeros(1, 2, 16, 16, 16))
    with pytest.raises(DataError, match="multiples of 4"):
        tiny.encode(torch.zeros(1, 1, 14, 14, 14))
    with pytest.raises(DataError, match="ids must be in"):
        tiny.decode(torch.full((1, 4, 4, 4), 64))
    with pytest.raises(ConfigError, match=r"TokenizerConfig\.roi_size"):
        TokenizerConfig.preset("tiny", roi_size=18)
    with pytest.raises(ConfigError, match=r"unknown field.*importance_budget"):
        TokenizerConfig.from_dict({"importance_budget": 0.25})
    with pytest.raises(ConfigError, match="importance='gate' was removed"):
        TokenizerConfig.from_dict({"importance": "gate", "coarse_pool": 2})
    legacy = {
        **TokenizerConfig.preset("tiny").to_dict(),
        "importance": "classifier",
        "coarse_pool": 2,
    }
    assert TokenizerConfig.from_dict(legacy) == TokenizerConfig.preset("tiny")


def test_save_load_round_trip_gives_identical_outputs(tiny, tmp_path):
    tiny(roi())  # fills the usage buffer, which is saved too
    tiny.save_pretrained(tmp_path / "tok")
    loaded = VQGAN3D.from_pretrained(tmp_path / "tok")
    assert loaded.config == tiny.config
    x = roi(seed=1)
    tiny.eval()
    with torch.no_grad():
        tokens, importance = tiny.encode(x)
        tokens2, importance2 = loaded.encode(x)
        assert torch.equal(tokens, tokens2) and torch.equal(importance, importance2)
        assert torch.equal(tiny.decode(tokens), loaded.decode(tokens))
    meta = json.loads((tmp_path / "tok" / CONFIG_NAME).read_text())
    assert meta["model_type"] == "vqgan3d"


@pytest.mark.parametrize(
    "damage", ["missing_weights", "missing_config", "tampered", "newer", "shape", "wrong_type"]
)
def test_bad_checkpoints_raise_checkpoint_error(tiny, tmp_path, damage):
    directory = tiny.save_pretrained(tmp_path / "tok")
    meta = json.loads((directory / CONFIG_NAME).read_text())
    if damage == "missing_weights":
        (directory / WEIGHTS_NAME).unlink()
    elif damage == "missing_config":
        (directory / CONFIG_NAME).unlink()
    elif damage == "tampered":
        data = bytearray((directory / WEIGHTS_NAME).read_bytes())
        data[len(data) // 2] ^= 0xFF
        (directory / WEIGHTS_NAME).write_bytes(bytes(data))
    elif damage == "newer":
        meta["format_version"] = 99
        (directory / CONFIG_NAME).write_text(json.dumps(meta))
    elif damage == "shape":
        meta["config"]["codebook_size"] = 32
        (directory / CONFIG_NAME).write_text(json.dumps(meta))
    elif damage == "wrong_type":
        meta["model_type"] = "masked_transformer"
        (directory / CONFIG_NAME).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=str(directory)):
        VQGAN3D.from_pretrained(directory)
