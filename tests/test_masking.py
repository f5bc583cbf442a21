"""Hybrid importance masking and MaskGIT masking: exact counts, 3D dilation, determinism."""

from __future__ import annotations

import math

import pytest
import torch

from tumoraug.training.masking import (
    corrupt,
    cosine_schedule,
    dilate,
    hybrid_corrupt,
    importance_mask,
    maskgit_corrupt,
    random_mask,
    random_replace,
    topk_mask,
)

MASK_ID = 16
CODEBOOK = 16


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def point_importance(shape, points) -> torch.Tensor:
    """An importance map that is 0 everywhere except 1 at the given (b, z, y, x) points."""
    importance = torch.zeros(shape)
    for point in points:
        importance[point] = 1.0
    return importance


def test_topk_picks_exactly_the_most_important_positions():
    importance = torch.arange(2 * 4 * 4 * 4, dtype=torch.float32).reshape(2, 4, 4, 4)
    mask = topk_mask(importance, 0.25)
    assert mask.shape == importance.shape
    assert mask.reshape(2, -1).sum(1).tolist() == [16, 16]
    # the 16 largest values of each grid are its last 16 flat positions
    assert mask.reshape(2, -1)[:, -16:].all()
    assert not mask.reshape(2, -1)[:, :-16].any()


def test_topk_ties_are_stable_and_zero_ratio_is_empty():
    flat_ties = torch.zeros(1, 2, 2, 2)
    assert topk_mask(flat_ties, 0.25).reshape(-1).tolist() == [True, True] + [False] * 6
    assert not topk_mask(flat_ties, 0.0).any()
    assert topk_mask(flat_ties, 0.01).sum() == 1  # a positive ratio masks at least one token


def test_dilation_is_a_3d_cube_inside_the_grid():
    centre = point_importance((1, 5, 5, 5), [(0, 2, 2, 2)]) > 0
    grown = dilate(centre, 1)
    assert grown.sum() == 27
    assert grown[0, 1:4, 1:4, 1:4].all()
    assert dilate(centre, 2).sum() == 125
    assert torch.equal(dilate(centre, 0), centre)


def test_dilation_stops_at_grid_borders():
    corner = point_importance((1, 4, 4, 4), [(0, 0, 0, 0)]) > 0
    assert dilate(corner, 1).sum() == 8  # 2x2x2: nothing wraps around or spills out
    edge = point_importance((1, 4, 4, 4), [(0, 0, 0, 2)]) > 0
    assert dilate(edge, 1).sum() == 2 * 2 * 3
    far = point_importance((1, 4, 4, 4), [(0, 3, 3, 3)]) > 0
    assert dilate(far, 1)[0, 2:, 2:, 2:].all() and dilate(far, 1).sum() == 8


def test_importance_mask_combines_topk_and_neighbours_per_sample():
    importance = point_importance((2, 6, 6, 6), [(0, 3, 3, 3), (1, 0, 5, 0)])
    mask = importance_mask(importance, 1 / 216, 1)  # exactly one top token per grid
    assert mask[0].sum() == 27 and mask[0, 2:5, 2:5, 2:5].all()
    assert mask[1].sum() == 8 and mask[1, 0:2, 4:6, 0:2].all()


def test_random_mask_counts_follow_the_ratio():
    shape = (3, 4, 4, 4)
    mask = random_mask(shape, gen(), ratio=0.5)
    assert mask.reshape(3, -1).sum(1).tolist() == [32, 32, 32]
    assert random_mask(shape, gen(), ratio=1.0).all()
    assert random_mask(shape, gen(), ratio=0.0).reshape(3, -1).sum(1).tolist() == [1, 1, 1]
    # sampled ratios: counts are ceil(cos(pi/2 u) * N) with u drawn first from the generator
    g = gen(7)
    u = torch.rand(3, generator=gen(7), dtype=torch.float64)
    expected = [max(1, math.ceil(float(cosine_schedule(x)) * 64 - 1e-9)) for x in u]
    assert random_mask(shape, g).reshape(3, -1).sum(1).tolist() == expected


def test_random_replace_exact_count_only_among_candidates():
    tokens = torch.zeros(2, 4, 4, 4, dtype=torch.long)
    candidates = torch.zeros(2, 4, 4, 4, dtype=torch.bool)
    candidates[:, :2] = True  # 32 candidates per sample
    new, replaced = random_replace(tokens, candidates, 0.25, CODEBOOK, gen())
    assert replaced.reshape(2, -1).sum(1).tolist() == [8, 8]
    assert not (replaced & ~candidates).any()
    assert torch.equal(new[~replaced], tokens[~replaced])
    assert int(new.max()) < CODEBOOK and int(new.min()) >= 0


def test_hybrid_exact_counts_of_masked_and_replaced_positions():
    tokens = torch.randint(CODEBOOK, (2, 6, 6, 6), generator=gen(1))
    importance = point_importance((2, 6, 6, 6), [(0, 3, 3, 3), (1, 0, 0, 0)])
    corrupted, mask = hybrid_corrupt(
        tokens,
        importance,
        gen(),
        mask_id=MASK_ID,
        codebook_size=CODEBOOK,
        topk_ratio=1 / 216,
        neighbor_radius=1,
        random_replace_ratio=0.5,
        random_mask_prob=0.0,
    )
    masked = corrupted == MASK_ID
    assert masked.reshape(2, -1).sum(1).tolist() == [27, 8]
    # half of the remaining (216-27, 216-8) unimportant tokens are corrupted by replacement
    replaced = mask & ~masked
    assert replaced.reshape(2, -1).sum(1).tolist() == [round(189 * 0.5), round(208 * 0.5)]
    assert torch.equal(corrupted[~mask], tokens[~mask])
    assert int(corrupted[replaced].max()) < CODEBOOK


def test_hybrid_random_mask_adds_on_top_of_importance_mask():
    tokens = torch.randint(CODEBOOK, (4, 4, 4, 4), generator=gen(1))
    importance = torch.rand(4, 4, 4, 4, generator=gen(2))
    base = importance_mask(importance, 0.25, 1)
    corrupted, mask = hybrid_corrupt(
        tokens,
        importance,
        gen(),
        mask_id=MASK_ID,
        codebook_size=CODEBOOK,
        random_replace_ratio=0.0,
        random_mask_prob=1.0,
    )
    masked = corrupted == MASK_ID
    assert torch.equal(masked, mask)
    assert (masked | ~base).all()  # every important position stays masked
    assert masked.sum() >= base.sum()


def test_topk_zero_gives_pure_random_masking():
    tokens = torch.randint(CODEBOOK, (3, 4, 4, 4), generator=gen(1))
    importance = torch.rand(3, 4, 4, 4, generator=gen(2))
    hybrid = hybrid_corrupt(
        tokens, importance, gen(5), mask_id=MASK_ID, codebook_size=CODEBOOK, topk_ratio=0.0
    )
    plain = maskgit_corrupt(tokens, MASK_ID, gen(5))
    assert torch.equal(hybrid[0], plain[0]) and torch.equal(hybrid[1], plain[1])
    # pure masking: every corrupted position is [MASK], nothing is replaced
    assert torch.equal(hybrid[0] == MASK_ID, hybrid[1])


@pytest.mark.parametrize("mode", ["hybrid", "random"])
def test_corruption_is_deterministic_with_a_seed(mode):
    tokens = torch.randint(CODEBOOK, (2, 4, 4, 4), generator=gen(1))
    importance = torch.rand(2, 4, 4, 4, generator=gen(2))
    kwargs = dict(mode=mode, mask_id=MASK_ID, codebook_size=CODEBOOK, random_replace_ratio=0.3)
    a = corrupt(tokens, importance, gen(3), **kwargs)
    b = corrupt(tokens, importance, gen(3), **kwargs)
    c = corrupt(tokens, importance, gen(4), **kwargs)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1]) or not torch.equal(a[0], c[0])


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="masking mode"):
        corrupt(
            torch.zeros(1, 2, 2, 2, dtype=torch.long),
            torch.zeros(1, 2, 2, 2),
            gen(),
            mode="nope",
            mask_id=1,
            codebook_size=1,
        )
    with pytest.raises(ValueError, match="grid"):
        topk_mask(torch.zeros(8), 0.5)
    with pytest.raises(ValueError, match="radius"):
        dilate(torch.zeros(1, 2, 2, 2, dtype=torch.bool), -1)
