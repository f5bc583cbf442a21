"""MaskedTransformer: shapes, class conditioning, bidirectionality, checkpoint round trip."""

from __future__ import annotations

import pytest
import torch

from tumoraug.config import TransformerConfig
from tumoraug.errors import CheckpointError, ConfigError
from tumoraug.models.transformer import (
    MaskedTransformer,
    PerClassTransformer,
    build_transformer,
    transformer_class,
)


def tiny(**overrides) -> MaskedTransformer:
    config = TransformerConfig.preset(
        "tiny", codebook_size=16, token_grid=(2, 3, 4), dim=32, dropout=0.0, **overrides
    )
    return MaskedTransformer(config).eval()


@pytest.mark.parametrize("pos", ["factorized", "learned"])
def test_logits_cover_the_codebook_at_every_position(pos):
    model = tiny(pos_embedding=pos)
    tokens = torch.randint(17, (3, 2, 3, 4))  # includes [MASK] = 16
    logits = model(tokens, torch.tensor([0, 1, 2]))
    assert logits.shape == (3, 2, 3, 4, 16)
    assert torch.isfinite(logits).all()
    assert model.mask_id == 16 and model.null_class == 2


def test_class_token_changes_the_prediction():
    model = tiny()
    tokens = torch.full((1, 2, 3, 4), model.mask_id)
    outs = [model(tokens, torch.tensor([c])) for c in range(3)]
    assert not torch.allclose(outs[0], outs[1])
    assert not torch.allclose(outs[1], outs[2])


def test_attention_is_bidirectional_and_positions_matter():
    model = tiny()
    tokens = torch.full((1, 2, 3, 4), model.mask_id)
    changed = tokens.clone()
    changed[0, -1, -1, -1] = 3  # the last position influences the first one
    label = torch.tensor([1])
    assert not torch.allclose(model(tokens, label)[0, 0, 0, 0], model(changed, label)[0, 0, 0, 0])
    out = model(tokens, label)[0].reshape(-1, 16)
    assert not torch.allclose(out[0], out[5])  # same input token, different positions


def test_wrong_grid_is_rejected():
    with pytest.raises(ValueError, match="token_grid"):
        tiny()(torch.zeros(1, 4, 4, 4, dtype=torch.long), torch.tensor([0]))


def test_save_and_load_round_trip(tmp_path):
    model = tiny(pos_embedding="learned")
    model.save_pretrained(tmp_path / "gen")
    loaded = MaskedTransformer.from_pretrained(tmp_path / "gen")
    assert loaded.config == model.config
    tokens = torch.randint(17, (2, 2, 3, 4))
    labels = torch.tensor([0, 1])
    assert torch.equal(model(tokens, labels), loaded(tokens, labels))
    assert MaskedTransformer.load_config(tmp_path / "gen") == model.config
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        MaskedTransformer.from_pretrained(tmp_path / "nothing-here")


def baseline(**overrides) -> PerClassTransformer:
    config = TransformerConfig.preset(
        "tiny", codebook_size=16, token_grid=(2, 3, 4), dim=32, dropout=0.0, **overrides
    ).baseline()
    return build_transformer(config).eval()


def test_baseline_config_switch_builds_one_unconditional_network_per_grade():
    model = baseline()
    assert isinstance(model, PerClassTransformer) and len(model.members) == 2
    assert model.config.conditioning == "per_class"
    assert isinstance(build_transformer(TransformerConfig.preset("tiny")), MaskedTransformer)
    with pytest.raises(ConfigError, match="PerClassTransformer"):
        MaskedTransformer(model.config)
    with pytest.raises(ConfigError, match="conditioning"):
        TransformerConfig.preset("tiny", conditioning="film")


def test_baseline_routes_each_sample_to_its_grade_network():
    model = baseline()
    tokens = torch.randint(16, (4, 2, 3, 4))
    labels = torch.tensor([1, 0, 0, 1])
    logits = model(tokens, labels)
    assert logits.shape == (4, 2, 3, 4, 16)
    for i, grade in enumerate(labels.tolist()):
        member = model.members[grade]
        alone = member(tokens[i : i + 1], torch.tensor([member.null_class]))
        assert torch.allclose(logits[i], alone[0], atol=1e-5)
    with pytest.raises(ValueError, match="no null class"):
        model(tokens, torch.full((4,), model.config.null_class))


def test_baseline_gives_every_member_a_gradient_even_when_a_grade_is_absent():
    model = baseline().train()
    tokens = torch.randint(16, (2, 2, 3, 4))
    model(tokens, torch.tensor([1, 1])).sum().backward()
    assert all(p.grad is not None for p in model.members[0].parameters())
    assert all(float(p.grad.abs().sum()) == 0 for p in model.members[0].parameters())
    assert any(float(p.grad.abs().sum()) > 0 for p in model.members[1].parameters())


def test_baseline_save_and_load_round_trip(tmp_path):
    model = baseline()
    model.save_pretrained(tmp_path / "gen")
    config = MaskedTransformer.load_config(tmp_path / "gen")
    loaded = transformer_class(config).from_pretrained(tmp_path / "gen")
    tokens, labels = torch.randint(16, (2, 2, 3, 4)), torch.tensor([0, 1])
    assert torch.equal(model(tokens, labels), loaded(tokens, labels))
