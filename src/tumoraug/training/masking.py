"""Token corruption for stage-2 training: hybrid importance masking and plain MaskGIT masking.

The stage-2 transformer learns to predict the original codebook token at every *corrupted*
position of a token grid. Two corruption recipes live here, as pure functions of the tokens,
the importance map and an explicit `torch.Generator`:

* **hybrid importance masking** (the method's own): the ``topk_ratio`` most important tokens
  of each grid and their 3D neighbours within ``neighbor_radius`` (a cube, cut at the grid
  borders) become ``[MASK]``; of the tokens left visible, a fraction ``random_replace_ratio``
  is swapped for random codebook tokens, so that the model also learns to distrust visible
  context. The amount masked follows the importance map, not a sampled decoding time step
  (the masking is *temporal-agnostic*). With probability ``random_mask`` per sample a
  cosine-schedule random mask is added on top (union), so that the model also sees grids
  that are almost or fully masked, which is where sampling starts.
* **MaskGIT random masking** (the baseline): a ratio ``cos(pi/2 * u)`` with ``u ~ U(0, 1)``
  per sample, and that many positions, chosen uniformly, become ``[MASK]``.

Every function returns booleans of the same shape as the tokens, ``(B, d, h, w)``; the
corruption functions return ``(corrupted_tokens, corrupted)`` where ``corrupted`` marks every
position the loss is computed on (masked or replaced).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

MASKING_MODES: tuple[str, ...] = ("hybrid", "random")


def cosine_schedule(progress: torch.Tensor | float) -> torch.Tensor:
    """Fraction of tokens still masked at ``progress`` in [0, 1]: ``cos(pi/2 * progress)``."""
    return torch.cos(torch.as_tensor(progress, dtype=torch.float64) * (math.pi / 2))


def _check_grid(name: str, tensor: torch.Tensor) -> None:
    if tensor.ndim != 4:
        raise ValueError(f"{name}: expected a (B, d, h, w) grid, got shape {tuple(tensor.shape)}")


def topk_mask(importance: torch.Tensor, ratio: float) -> torch.Tensor:
    """Mark the ``round(ratio * d*h*w)`` most important positions of each grid (at least one
    when ``ratio > 0``); ties go to the lower flat index, so the result is exact and stable."""
    _check_grid("importance", importance)
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"topk ratio must be in [0, 1], got {ratio}")
    batch = importance.shape[0]
    flat = importance.reshape(batch, -1)
    count = 0 if ratio == 0 else max(1, round(ratio * flat.shape[1]))
    order = torch.sort(flat, dim=1, descending=True, stable=True).indices[:, :count]
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask.scatter_(1, order, True)
    return mask.reshape(importance.shape)


def dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Grow a boolean grid mask by ``radius`` tokens along every axis (a cube of side
    ``2*radius + 1``); positions outside the grid are never added, so it stops at the borders."""
    _check_grid("mask", mask)
    if radius < 0:
        raise ValueError(f"neighbour radius must be >= 0, got {radius}")
    if radius == 0:
        return mask.clone()
    size = 2 * radius + 1
    grown = F.max_pool3d(mask[:, None].float(), kernel_size=size, stride=1, padding=radius)
    return grown[:, 0] > 0.5


def importance_mask(
    importance: torch.Tensor, topk_ratio: float, neighbor_radius: int
) -> torch.Tensor:
    """The top-``topk_ratio`` important positions of each grid, dilated by ``neighbor_radius``."""
    return dilate(topk_mask(importance, topk_ratio), neighbor_radius)


def _choose(
    candidates: torch.Tensor, counts: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """Pick exactly ``counts[b]`` positions uniformly among ``candidates[b]`` for every b."""
    batch = candidates.shape[0]
    flat = candidates.reshape(batch, -1)
    scores = torch.rand(flat.shape, generator=generator, device="cpu").to(flat.device)
    scores = torch.where(flat, scores, torch.full_like(scores, 2.0))
    rank = scores.argsort(dim=1).argsort(dim=1)
    chosen = (rank < counts.to(flat.device)[:, None]) & flat
    return chosen.reshape(candidates.shape)


def random_mask(
    shape: torch.Size | tuple[int, ...],
    generator: torch.Generator,
    *,
    ratio: torch.Tensor | float | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """A MaskGIT random mask of ``shape`` (B, d, h, w).

    Each sample masks ``ceil(r * d*h*w)`` positions (at least one) chosen uniformly, with
    ``r = ratio`` when given, else ``r = cos(pi/2 * u)`` with ``u ~ U(0, 1)`` per sample.
    """
    if len(shape) != 4:
        raise ValueError(f"expected a (B, d, h, w) shape, got {tuple(shape)}")
    batch, total = shape[0], math.prod(shape[1:])
    if ratio is None:
        ratios = cosine_schedule(torch.rand(batch, generator=generator, dtype=torch.float64))
    else:
        ratios = torch.as_tensor(ratio, dtype=torch.float64).expand(batch)
    counts = torch.ceil(ratios * total - 1e-9).long().clamp(1, total)
    everywhere = torch.ones(shape, dtype=torch.bool, device=device)
    return _choose(everywhere, counts, generator)


def random_replace(
    tokens: torch.Tensor,
    candidates: torch.Tensor,
    ratio: float,
    codebook_size: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Swap ``round(ratio * n_candidates)`` uniformly chosen candidate positions per sample for
    uniformly random codebook tokens; returns ``(new_tokens, replaced)``."""
    _check_grid("tokens", tokens)
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"random replace ratio must be in [0, 1], got {ratio}")
    counts = torch.round(candidates.reshape(tokens.shape[0], -1).sum(1).double() * ratio).long()
    replaced = _choose(candidates, counts.cpu(), generator)
    random_tokens = torch.randint(codebook_size, tokens.shape, generator=generator, device="cpu")
    return torch.where(replaced, random_tokens.to(tokens.device), tokens), replaced


def maskgit_corrupt(
    tokens: torch.Tensor, mask_id: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain MaskGIT corruption: a cosine-schedule random mask set to ``mask_id``."""
    _check_grid("tokens", tokens)
    masked = random_mask(tokens.shape, generator, device=tokens.device)
    return tokens.masked_fill(masked, mask_id), masked


def hybrid_corrupt(
    tokens: torch.Tensor,
    importance: torch.Tensor,
    generator: torch.Generator,
    *,
    mask_id: int,
    codebook_size: int,
    topk_ratio: float = 0.25,
    neighbor_radius: int = 1,
    random_replace_ratio: float = 0.1,
    random_mask_prob: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hybrid importance masking (see the module docstring); returns ``(corrupted, mask)``.

    ``topk_ratio = 0`` switches the importance part off and gives exactly `maskgit_corrupt`
    (same generator draws), the plain random-masking baseline.
    """
    _check_grid("tokens", tokens)
    if importance.shape != tokens.shape:
        raise ValueError(
            f"importance shape {tuple(importance.shape)} != tokens shape {tuple(tokens.shape)}"
        )
    if topk_ratio == 0:
        return maskgit_corrupt(tokens, mask_id, generator)
    masked = importance_mask(importance, topk_ratio, neighbor_radius)
    if random_mask_prob > 0:
        extra = random_mask(tokens.shape, generator, device=tokens.device)
        use = torch.rand(tokens.shape[0], generator=generator) < random_mask_prob
        masked = masked | (extra & use.to(tokens.device)[:, None, None, None])
    corrupted, replaced = random_replace(
        tokens, ~masked, random_replace_ratio, codebook_size, generator
    )
    return corrupted.masked_fill(masked, mask_id), masked | replaced


def corrupt(
    tokens: torch.Tensor,
    importance: torch.Tensor,
    generator: torch.Generator,
    *,
    mode: str,
    mask_id: int,
    codebook_size: int,
    topk_ratio: float = 0.25,
    neighbor_radius: int = 1,
    random_replace_ratio: float = 0.1,
    random_mask_prob: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Corrupt a token batch with the masking ``mode`` ("hybrid" or "random")."""
    if mode == "random":
        return maskgit_corrupt(tokens, mask_id, generator)
    if mode == "hybrid":
        return hybrid_corrupt(
            tokens,
            importance,
            generator,
            mask_id=mask_id,
            codebook_size=codebook_size,
            topk_ratio=topk_ratio,
            neighbor_radius=neighbor_radius,
            random_replace_ratio=random_replace_ratio,
            random_mask_prob=random_mask_prob,
        )
    raise ValueError(f"unknown masking mode {mode!r}; expected one of {', '.join(MASKING_MODES)}")
