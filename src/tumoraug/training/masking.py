"""Token corruption for stage-2 training: hybrid importance masking on a budget, and MaskGIT.

The stage-2 transformer learns to predict the original codebook token at every *corrupted*
position of a token grid. Both recipes here corrupt the same *number* of positions and
differ only in *which* positions, so that an ablation over ``topk_ratio`` compares choices
of tokens, not corruption levels:

1. **The budget** (both recipes). Per sample, ``u ~ U(0, 1)``, the mask ratio is MaskGIT's
   cosine schedule ``r = cos(pi/2 * u)`` and exactly ``N = ceil(r * T)`` of the ``T`` tokens
   become ``[MASK]`` (at least one). Sampling walks the same schedule from all-masked to
   none, so training sees the whole range of ratios that decoding meets. The ratio is the
   first draw of the generator, so the same seed gives the same ``N`` in every arm.
2. **Which tokens** (hybrid importance masking, the paper's method). The *pool* is the
   ``ceil(topk_ratio * T)`` most important tokens. ``min(N // 2, pool)`` *seeds* are drawn
   from the pool without replacement, with probability proportional to the importance
   score; each seed adds one random face neighbour (6-connected, any axis, inside the grid,
   not yet chosen): important regions are masked as small blocks. The rest of ``N`` is drawn
   uniformly from the tokens not yet chosen. ``topk_ratio = 0`` means no seeds, and the
   draws are exactly those of plain MaskGIT (`maskgit_corrupt`).
3. **Random codes** (hybrid only). A share ``random_replace_ratio`` of the *visible* tokens,
   ``round(ratio * (T - N))``, is swapped for uniformly random codebook tokens and kept in
   the loss, so that the model learns to distrust visible context. The count depends on
   ``N`` only, so it also matches across arms.

Masks are redrawn at every step (the generator is seeded per step). Every function works on
``(B, d, h, w)`` grids with an explicit CPU `torch.Generator`; the corruption functions return
``(corrupted_tokens, masked, replaced)`` booleans of the grid's shape.
"""

from __future__ import annotations

import math

import torch

MASKING_MODES: tuple[str, ...] = ("hybrid", "random")
FACE_OFFSETS = ((1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1))


def cosine_schedule(progress: torch.Tensor | float) -> torch.Tensor:
    """Fraction of tokens still masked at ``progress`` in [0, 1]: ``cos(pi/2 * progress)``."""
    return torch.cos(torch.as_tensor(progress, dtype=torch.float64) * (math.pi / 2))


def _check_grid(name: str, tensor: torch.Tensor) -> None:
    if tensor.ndim != 4:
        raise ValueError(f"{name}: expected a (B, d, h, w) grid, got shape {tuple(tensor.shape)}")


def mask_counts(batch: int, total: int, rng: torch.Generator) -> torch.Tensor:
    """``N = ceil(cos(pi/2 * u) * total)`` per sample (at least 1): the corruption budget."""
    ratios = cosine_schedule(torch.rand(batch, generator=rng, dtype=torch.float64))
    return torch.ceil(ratios * total - 1e-9).long().clamp(1, total)


def choose(candidates: torch.Tensor, counts: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    """Pick exactly ``counts[b]`` positions uniformly among ``candidates[b]`` for every b."""
    batch = candidates.shape[0]
    flat = candidates.reshape(batch, -1)
    scores = torch.rand(flat.shape, generator=rng, device="cpu").to(flat.device)
    scores = torch.where(flat, scores, torch.full_like(scores, 2.0))
    rank = scores.argsort(dim=1).argsort(dim=1)
    chosen = (rank < counts.to(flat.device)[:, None]) & flat
    return chosen.reshape(candidates.shape)


def importance_pool(importance: torch.Tensor, topk_ratio: float) -> torch.Tensor:
    """The ``ceil(topk_ratio * T)`` most important positions of each grid (ties: lower index)."""
    _check_grid("importance", importance)
    if not 0.0 <= topk_ratio <= 1.0:
        raise ValueError(f"topk ratio must be in [0, 1], got {topk_ratio}")
    batch = importance.shape[0]
    flat = importance.reshape(batch, -1)
    size = math.ceil(topk_ratio * flat.shape[1] - 1e-9)
    order = torch.sort(flat, dim=1, descending=True, stable=True).indices[:, :size]
    pool = torch.zeros_like(flat, dtype=torch.bool)
    pool.scatter_(1, order, True)
    return pool.reshape(importance.shape)


def draw_seeds(
    importance: torch.Tensor, pool: torch.Tensor, counts: torch.Tensor, rng: torch.Generator
) -> torch.Tensor:
    """``counts[b]`` pool positions per sample, drawn without replacement in proportion to
    the score (exponential race: the smallest ``Exp(1) / score`` wins)."""
    batch = importance.shape[0]
    scores = importance.reshape(batch, -1).float().clamp_min(1e-12)
    uniform = torch.rand(scores.shape, generator=rng, device="cpu").to(scores.device)
    race = -torch.log(uniform.clamp_min(1e-20)) / scores
    race = race.masked_fill(~pool.reshape(batch, -1), float("inf"))
    rank = race.argsort(dim=1).argsort(dim=1)
    return (rank < counts.to(scores.device)[:, None]).reshape(importance.shape)


def add_face_neighbours(seeds: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    """Seeds plus one random 6-connected neighbour each (inside the grid, not yet chosen;
    a seed whose neighbours are all taken adds none). Seeds are visited in a random order."""
    batch, d, h, w = seeds.shape
    chosen = seeds.clone()
    flat = chosen.reshape(batch, -1)
    grid = torch.tensor([d, h, w], device=seeds.device)
    offsets = torch.tensor(FACE_OFFSETS, device=seeds.device)  # (6, 3)
    order = torch.rand(seeds.reshape(batch, -1).shape, generator=rng).to(seeds.device)
    order = order.masked_fill(~seeds.reshape(batch, -1), 2.0).argsort(dim=1)
    per_sample = seeds.reshape(batch, -1).sum(1)
    rows = torch.arange(batch, device=seeds.device)
    for j in range(int(per_sample.max()) if batch else 0):
        active = per_sample > j
        index = order[:, j]
        coords = torch.stack([index // (h * w), index // w % h, index % w], dim=1)  # (B, 3)
        neighbours = coords[:, None, :] + offsets[None]  # (B, 6, 3)
        inside = ((neighbours >= 0) & (neighbours < grid)).all(-1)
        linear = (neighbours[..., 0] * h + neighbours[..., 1]) * w + neighbours[..., 2]
        linear = linear.clamp(0, d * h * w - 1)
        free = inside & ~flat.gather(1, linear) & active[:, None]
        pick = torch.rand(batch, 6, generator=rng).to(seeds.device).masked_fill(~free, 2.0)
        best = pick.argmin(dim=1)
        take = free[rows, best]
        flat[rows[take], linear[rows, best][take]] = True
    return chosen


def random_replace(
    tokens: torch.Tensor,
    candidates: torch.Tensor,
    counts: torch.Tensor,
    codebook_size: int,
    rng: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Swap ``counts[b]`` uniformly chosen candidate positions per sample for uniformly random
    codebook tokens; returns ``(new_tokens, replaced)``."""
    _check_grid("tokens", tokens)
    replaced = choose(candidates, counts, rng)
    random_tokens = torch.randint(codebook_size, tokens.shape, generator=rng, device="cpu")
    return torch.where(replaced, random_tokens.to(tokens.device), tokens), replaced


def maskgit_corrupt(
    tokens: torch.Tensor, mask_id: int, rng: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Plain MaskGIT: ``N`` positions chosen uniformly become ``mask_id`` (no random codes)."""
    _check_grid("tokens", tokens)
    counts = mask_counts(tokens.shape[0], math.prod(tokens.shape[1:]), rng)
    masked = choose(torch.ones_like(tokens, dtype=torch.bool), counts, rng)
    return tokens.masked_fill(masked, mask_id), masked, torch.zeros_like(masked)


def hybrid_corrupt(
    tokens: torch.Tensor,
    importance: torch.Tensor,
    rng: torch.Generator,
    *,
    mask_id: int,
    codebook_size: int,
    topk_ratio: float = 0.25,
    random_replace_ratio: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hybrid importance masking on the MaskGIT budget (see the module docstring)."""
    _check_grid("tokens", tokens)
    if importance.shape != tokens.shape:
        raise ValueError(
            f"importance shape {tuple(importance.shape)} != tokens shape {tuple(tokens.shape)}"
        )
    if not 0.0 <= random_replace_ratio <= 1.0:
        raise ValueError(f"random replace ratio must be in [0, 1], got {random_replace_ratio}")
    batch, total = tokens.shape[0], math.prod(tokens.shape[1:])
    counts = mask_counts(batch, total, rng)
    everywhere = torch.ones_like(tokens, dtype=torch.bool)
    if topk_ratio > 0:
        pool = importance_pool(importance, topk_ratio)
        n_seeds = torch.minimum(counts // 2, pool.reshape(batch, -1).sum(1).cpu())
        chosen = add_face_neighbours(draw_seeds(importance, pool, n_seeds, rng), rng)
        rest = counts - chosen.reshape(batch, -1).sum(1).cpu()
        masked = chosen | choose(~chosen, rest, rng)
    else:
        masked = choose(everywhere, counts, rng)
    replace = torch.round((total - counts).double() * random_replace_ratio).long()
    corrupted, replaced = random_replace(tokens, ~masked, replace, codebook_size, rng)
    return corrupted.masked_fill(masked, mask_id), masked, replaced


def corrupt(
    tokens: torch.Tensor,
    importance: torch.Tensor,
    rng: torch.Generator,
    *,
    mode: str,
    mask_id: int,
    codebook_size: int,
    topk_ratio: float = 0.25,
    random_replace_ratio: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Corrupt a token batch with the masking ``mode`` ("hybrid" or "random")."""
    if mode == "random":
        return maskgit_corrupt(tokens, mask_id, rng)
    if mode == "hybrid":
        return hybrid_corrupt(
            tokens,
            importance,
            rng,
            mask_id=mask_id,
            codebook_size=codebook_size,
            topk_ratio=topk_ratio,
            random_replace_ratio=random_replace_ratio,
        )
    raise ValueError(f"unknown masking mode {mode!r}; expected one of {', '.join(MASKING_MODES)}")
