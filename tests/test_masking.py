"""Hybrid importance masking on the MaskGIT budget: exact counts, matched arms, the pool."""

from __future__ import annotations

import math

import pytest
import torch

from tumoraug.training.masking import (
    add_face_neighbours,
    corrupt,
    cosine_schedule,
    draw_seeds,
    hybrid_corrupt,
    importance_pool,
    mask_counts,
    maskgit_corrupt,
)

MASK_ID = 16
CODEBOOK = 16
GRID = (8, 4, 4, 4)


def rng(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def grids(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = rng(100 + seed)
    return torch.randint(CODEBOOK, GRID, generator=g), torch.rand(GRID, generator=g)


def expected_counts(seed: int) -> list[int]:
    """``ceil(r * T)`` with ``r = cos(pi/2 u)``, u the first draw of the step's generator."""
    total = math.prod(GRID[1:])
    u = torch.rand(GRID[0], generator=rng(seed), dtype=torch.float64)
    return [max(1, math.ceil(float(cosine_schedule(v)) * total - 1e-9)) for v in u]


@pytest.mark.parametrize("topk_ratio", [0.0, 0.25, 0.5, 1.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_masked_count_per_sample_is_ceil_r_times_t_for_every_topk_ratio(topk_ratio, seed):
    tokens, importance = grids(seed)
    _, masked, replaced = hybrid_corrupt(
        tokens, importance, rng(seed), mask_id=MASK_ID, codebook_size=CODEBOOK,
        topk_ratio=topk_ratio, random_replace_ratio=0.1,
    )  # fmt: skip
    assert masked.reshape(GRID[0], -1).sum(1).tolist() == expected_counts(seed)
    assert not (masked & replaced).any()


def test_corrupted_fraction_distribution_is_identical_across_arms():
    fractions = {}
    for topk_ratio in (0.0, 0.25, 0.5):
        per_arm = []
        for seed in range(20):
            tokens, importance = grids(seed)
            _, masked, replaced = hybrid_corrupt(
                tokens, importance, rng(seed), mask_id=MASK_ID, codebook_size=CODEBOOK,
                topk_ratio=topk_ratio, random_replace_ratio=0.1,
            )  # fmt: skip
            per_arm += (masked | replaced).reshape(GRID[0], -1).float().mean(1).tolist()
        fractions[topk_ratio] = per_arm
    assert fractions[0.0] == fractions[0.25] == fractions[0.5]


def test_topk_zero_is_exactly_plain_maskgit():
    tokens, importance = grids()
    hybrid = hybrid_corrupt(
        tokens, importance, rng(7), mask_id=MASK_ID, codebook_size=CODEBOOK, topk_ratio=0.0,
        random_replace_ratio=0.0,
    )  # fmt: skip
    plain = maskgit_corrupt(tokens, MASK_ID, rng(7))
    for a, b in zip(hybrid, plain, strict=True):
        assert torch.equal(a, b)
    assert torch.equal(corrupt(tokens, importance, rng(7), mode="random", mask_id=MASK_ID,
                               codebook_size=CODEBOOK)[1], plain[1])  # fmt: skip


def test_no_seed_is_drawn_outside_the_pool_and_seeds_follow_the_score():
    importance = torch.rand(GRID, generator=rng(3))
    pool = importance_pool(importance, 0.25)
    assert pool.reshape(GRID[0], -1).sum(1).tolist() == [16] * GRID[0]
    counts = torch.full((GRID[0],), 8)
    hits = torch.zeros(GRID)
    for seed in range(200):
        seeds = draw_seeds(importance, pool, counts, rng(seed))
        assert seeds.reshape(GRID[0], -1).sum(1).tolist() == [8] * GRID[0]
        assert not (seeds & ~pool).any()
        hits += seeds.float()
    # within the pool, higher scores are drawn more often (proportional draws)
    for b in range(GRID[0]):
        scores, counts_b = importance[b][pool[b]], hits[b][pool[b]]
        top, bottom = scores.argmax(), scores.argmin()
        assert counts_b[top] >= counts_b[bottom]


def test_each_seed_adds_one_face_neighbour_inside_the_grid():
    seeds = torch.zeros(2, 3, 3, 3, dtype=torch.bool)
    seeds[0, 1, 1, 1] = True  # centre: 6 candidates
    seeds[1, 0, 0, 0] = True  # corner: 3 candidates
    grown = add_face_neighbours(seeds, rng(0))
    assert grown.reshape(2, -1).sum(1).tolist() == [2, 2]
    for b, (z, y, x) in ((0, (1, 1, 1)), (1, (0, 0, 0))):
        (extra,) = [tuple(p) for p in (grown[b] & ~seeds[b]).nonzero().tolist()]
        assert sum(abs(a - c) for a, c in zip(extra, (z, y, x), strict=True)) == 1


def test_hybrid_masks_the_important_region_more_often_than_plain_maskgit():
    tokens = torch.randint(CODEBOOK, GRID, generator=rng(1))
    importance = torch.full(GRID, 0.01)
    importance[:, :2] = 1.0  # the first two slices are the important region
    rates = {}
    for topk_ratio in (0.0, 0.5):
        masked_total = torch.zeros(GRID)
        for seed in range(50):
            _, masked, _ = hybrid_corrupt(
                tokens, importance, rng(seed), mask_id=MASK_ID, codebook_size=CODEBOOK,
                topk_ratio=topk_ratio, random_replace_ratio=0.0,
            )  # fmt: skip
            masked_total += masked.float()
        rates[topk_ratio] = masked_total[:, :2].mean() / masked_total[:, 2:].mean()
    assert rates[0.5] > 1.5 * rates[0.0]


def test_random_codes_replace_a_bounded_share_of_visible_tokens_only():
    tokens, importance = grids()
    corrupted, masked, replaced = hybrid_corrupt(
        tokens, importance, rng(5), mask_id=MASK_ID, codebook_size=CODEBOOK, topk_ratio=0.25,
        random_replace_ratio=0.5,
    )  # fmt: skip
    total = math.prod(GRID[1:])
    visible = total - masked.reshape(GRID[0], -1).sum(1)
    assert replaced.reshape(GRID[0], -1).sum(1).tolist() == torch.round(visible * 0.5).tolist()
    assert (corrupted[masked] == MASK_ID).all()
    assert (corrupted[~masked] < CODEBOOK).all()
    assert torch.equal(corrupted[~masked & ~replaced], tokens[~masked & ~replaced])


@pytest.mark.parametrize("mode", ["hybrid", "random"])
def test_corruption_is_deterministic_with_a_seed(mode):
    tokens, importance = grids()
    kwargs = dict(mode=mode, mask_id=MASK_ID, codebook_size=CODEBOOK)
    a = corrupt(tokens, importance, rng(11), **kwargs)
    b = corrupt(tokens, importance, rng(11), **kwargs)
    c = corrupt(tokens, importance, rng(12), **kwargs)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[1], c[1])


def test_mask_counts_cover_the_whole_schedule():
    counts = mask_counts(4000, 64, rng(0))
    assert int(counts.min()) >= 1 and int(counts.max()) == 64
    assert 0.55 < counts.float().mean().item() / 64 < 0.72  # E[cos(pi/2 u)] = 2/pi


def test_bad_inputs_raise_clear_errors():
    tokens, importance = grids()
    with pytest.raises(ValueError, match="importance shape"):
        hybrid_corrupt(tokens, importance[:, :2], rng(), mask_id=MASK_ID, codebook_size=16)
    with pytest.raises(ValueError, match="topk ratio"):
        importance_pool(importance, 1.5)
    with pytest.raises(ValueError, match="unknown masking mode"):
        corrupt(tokens, importance, rng(), mode="zigzag", mask_id=MASK_ID, codebook_size=16)
    with pytest.raises(ValueError, match=r"\(B, d, h, w\)"):
        maskgit_corrupt(tokens[0], MASK_ID, rng())
