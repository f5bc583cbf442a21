"""MaskGIT decoding: complete grids, determinism, evaluation counts, labels, per-sample seeds."""

from __future__ import annotations

import copy

import pytest
import torch

from tumoraug.config import GeneratorConfig
from tumoraug.models.transformer import MaskedTransformer
from tumoraug.sampling import (
    filter_logits,
    make_generators,
    network_evaluations,
    per_sample_seeds,
    sample_tokens,
)


@pytest.fixture(scope="module")
def model() -> MaskedTransformer:
    torch.manual_seed(0)
    config = GeneratorConfig.preset(
        "tiny", codebook_size=16, token_grid=(3, 3, 3), dim=32, dropout=0.0
    )
    return MaskedTransformer(config).eval()


def count_calls(model):
    calls = []
    handle = model.register_forward_hook(lambda m, args, out: calls.append(args[1].tolist()))
    return calls, handle


def test_output_is_complete_and_in_the_codebook(model):
    tokens = sample_tokens(model, torch.tensor([0, 1, 1]), make_generators([1, 2, 3]), steps=4)
    assert tokens.shape == (3, 3, 3, 3)
    assert not (tokens == model.mask_id).any()
    assert int(tokens.min()) >= 0 and int(tokens.max()) < 16


@pytest.mark.parametrize("guidance", [1.0, 2.0])
def test_same_seed_same_tokens_other_seed_other_tokens(model, guidance):
    labels = torch.tensor([1, 0])
    a = sample_tokens(model, labels, make_generators([5, 6]), steps=3, guidance_scale=guidance)
    b = sample_tokens(model, labels, make_generators([5, 6]), steps=3, guidance_scale=guidance)
    c = sample_tokens(model, labels, make_generators([7, 8]), steps=3, guidance_scale=guidance)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize(("steps", "guidance"), [(1, 1.0), (5, 1.0), (3, 1.5), (4, 0.0)])
def test_network_evaluations_equal_steps_times_two_with_guidance(model, steps, guidance):
    calls, handle = count_calls(model)
    try:
        sample_tokens(
            model,
            torch.tensor([0, 1]),
            make_generators([0, 1]),
            steps=steps,
            guidance_scale=guidance,
        )
    finally:
        handle.remove()
    assert len(calls) == steps  # one batched forward per round
    evaluations = sum(len(labels) for labels in calls)
    assert evaluations == 2 * network_evaluations(steps, guidance)


def test_labels_route_to_the_right_class_token(model):
    calls, handle = count_calls(model)
    try:
        sample_tokens(model, torch.tensor([1, 0, 1]), make_generators([0, 1, 2]), steps=2)
        sample_tokens(
            model, torch.tensor([1, 0]), make_generators([0, 1]), steps=1, guidance_scale=3.0
        )
    finally:
        handle.remove()
    assert calls[0] == calls[1] == [1, 0, 1]
    assert calls[2] == [1, 0, model.null_class, model.null_class]


def test_class_changes_the_sample(model):
    model = copy.deepcopy(model)
    with torch.no_grad():
        model.class_embedding.weight.mul_(100.0)  # a fresh model barely looks at the class
    hgg = sample_tokens(model, torch.tensor([1]), make_generators([3]), steps=3, temperature=0.0)
    lgg = sample_tokens(model, torch.tensor([0]), make_generators([3]), steps=3, temperature=0.0)
    assert not torch.equal(hgg, lgg)


@pytest.mark.parametrize("guidance", [1.0, 2.0])
def test_per_sample_seed_independent_of_batch_composition(model, guidance):
    kwargs = dict(steps=3, guidance_scale=guidance, top_k=8)
    batch = sample_tokens(
        model, torch.tensor([0, 1, 1, 0]), make_generators([10, 11, 12, 13]), **kwargs
    )
    alone = sample_tokens(model, torch.tensor([1]), make_generators([12]), **kwargs)
    reordered = sample_tokens(model, torch.tensor([1, 0]), make_generators([12, 99]), **kwargs)
    assert torch.equal(batch[2], alone[0])
    assert torch.equal(batch[2], reordered[0])


def test_greedy_and_filters(model):
    greedy = sample_tokens(model, torch.tensor([1]), make_generators([0]), steps=2, temperature=0.0)
    assert not (greedy == model.mask_id).any()
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0]])
    assert torch.isinf(filter_logits(logits, 2, None)[0, 2:]).all()
    kept = torch.isfinite(filter_logits(logits, None, 0.5))
    assert kept.tolist() == [[True, False, False, False]]
    top1 = sample_tokens(model, torch.tensor([0]), make_generators([4]), steps=2, top_k=1)
    assert torch.equal(
        top1, sample_tokens(model, torch.tensor([0]), make_generators([9]), steps=2, top_k=1)
    )


def test_per_sample_seeds_are_a_stable_prefix():
    assert per_sample_seeds(0, 8) == per_sample_seeds(0, 20)[:8]
    assert per_sample_seeds(0, 4, start=2) == per_sample_seeds(0, 6)[2:]
    assert len(set(per_sample_seeds(0, 100))) == 100
    assert per_sample_seeds(1, 3) != per_sample_seeds(0, 3)


def test_bad_settings_raise(model):
    with pytest.raises(ValueError, match="steps"):
        sample_tokens(model, torch.tensor([0]), make_generators([0]), steps=0)
    with pytest.raises(ValueError, match="one generator per sample"):
        sample_tokens(model, torch.tensor([0, 1]), make_generators([0]), steps=1)
