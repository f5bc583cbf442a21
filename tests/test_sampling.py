"""MaskGIT decoding: complete grids, determinism, evaluation counts, labels, per-sample seeds."""

from __future__ import annotations

import copy

import pytest
import torch

from tumoraug.config import TransformerConfig
from tumoraug.errors import ConfigError
from tumoraug.models.transformer import MaskedTransformer
from tumoraug.sampling import (
    SamplingConfig,
    filter_logits,
    make_rngs,
    per_sample_seeds,
    sample_tokens,
)


def sample(model, labels, seeds, **settings):
    return sample_tokens(
        model, torch.as_tensor(labels), make_rngs(seeds), SamplingConfig(**settings)
    )


@pytest.fixture(scope="module")
def model() -> MaskedTransformer:
    torch.manual_seed(0)
    config = TransformerConfig.preset(
        "tiny", codebook_size=16, token_grid=(3, 3, 3), dim=32, dropout=0.0
    )
    return MaskedTransformer(config).eval()


def count_calls(model):
    calls = []
    handle = model.register_forward_hook(lambda m, args, out: calls.append(args[1].tolist()))
    return calls, handle


def test_output_is_complete_and_in_the_codebook(model):
    tokens = sample(model, [0, 1, 1], [1, 2, 3], steps=4)
    assert tokens.shape == (3, 3, 3, 3)
    assert not (tokens == model.mask_id).any()
    assert int(tokens.min()) >= 0 and int(tokens.max()) < 16


@pytest.mark.parametrize("guidance", [1.0, 2.0])
def test_same_seed_same_tokens_other_seed_other_tokens(model, guidance):
    labels = torch.tensor([1, 0])
    a = sample(model, labels, [5, 6], steps=3, guidance_scale=guidance)
    b = sample(model, labels, [5, 6], steps=3, guidance_scale=guidance)
    c = sample(model, labels, [7, 8], steps=3, guidance_scale=guidance)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize(("steps", "guidance"), [(1, 1.0), (5, 1.0), (3, 1.5), (4, 0.0)])
def test_network_evaluations_equal_steps_times_two_with_guidance(model, steps, guidance):
    calls, handle = count_calls(model)
    try:
        sample(
            model,
            [0, 1],
            [0, 1],
            steps=steps,
            guidance_scale=guidance,
        )
    finally:
        handle.remove()
    assert len(calls) == steps  # one batched forward per round
    evaluations = sum(len(labels) for labels in calls)
    assert (
        evaluations == 2 * SamplingConfig(steps=steps, guidance_scale=guidance).network_evaluations
    )


def test_labels_route_to_the_right_class_token(model):
    calls, handle = count_calls(model)
    try:
        sample(model, [1, 0, 1], [0, 1, 2], steps=2, guidance_scale=1.0)
        sample(model, [1, 0], [0, 1], steps=1, guidance_scale=3.0)
    finally:
        handle.remove()
    assert calls[0] == calls[1] == [1, 0, 1]
    assert calls[2] == [1, 0, model.null_class, model.null_class]


def test_class_changes_the_sample(model):
    model = copy.deepcopy(model)
    with torch.no_grad():
        model.class_embedding.weight.mul_(100.0)  # a fresh model barely looks at the class
    hgg = sample(model, [1], [3], steps=3, temperature=0.0)
    lgg = sample(model, [0], [3], steps=3, temperature=0.0)
    assert not torch.equal(hgg, lgg)


@pytest.mark.parametrize("guidance", [1.0, 2.0])
def test_per_sample_seed_independent_of_batch_composition(model, guidance):
    kwargs = dict(steps=3, guidance_scale=guidance, top_k=8)
    batch = sample(model, [0, 1, 1, 0], [10, 11, 12, 13], **kwargs)
    alone = sample(model, [1], [12], **kwargs)
    reordered = sample(model, [1, 0], [12, 99], **kwargs)
    assert torch.equal(batch[2], alone[0])
    assert torch.equal(batch[2], reordered[0])


def test_greedy_and_filters(model):
    greedy = sample(model, [1], [0], steps=2, temperature=0.0)
    assert not (greedy == model.mask_id).any()
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0]])
    assert torch.isinf(filter_logits(logits, 2, None)[0, 2:]).all()
    kept = torch.isfinite(filter_logits(logits, None, 0.5))
    assert kept.tolist() == [[True, False, False, False]]
    top1 = sample(model, [0], [4], steps=2, top_k=1)
    assert torch.equal(top1, sample(model, [0], [9], steps=2, top_k=1))


def test_per_sample_seeds_are_a_stable_prefix():
    assert per_sample_seeds(0, 8) == per_sample_seeds(0, 20)[:8]
    assert per_sample_seeds(0, 4, start=2) == per_sample_seeds(0, 6)[2:]
    assert len(set(per_sample_seeds(0, 100))) == 100
    assert per_sample_seeds(1, 3) != per_sample_seeds(0, 3)


def test_bad_settings_raise(model):
    with pytest.raises(ConfigError, match="steps"):
        SamplingConfig(steps=0)
    with pytest.raises(ValueError, match="one rng per sample"):
        sample(model, [0, 1], [0], steps=1)


@pytest.mark.parametrize("field", ["guidance_scale", "temperature", "mask_temperature", "top_p"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1.0])
def test_non_finite_or_negative_settings_are_refused_where_defaults_live(field, value):
    with pytest.raises(ConfigError, match=field):
        SamplingConfig(**{field: value})


def test_sampling_config_round_trips_through_json():
    config = SamplingConfig(steps=4, guidance_scale=2.0, top_k=5)
    assert SamplingConfig.from_dict(config.to_dict()) == config
