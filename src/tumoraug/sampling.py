"""MaskGIT iterative parallel decoding of token grids with classifier-free guidance.

Sampling starts from a grid that is all ``[MASK]`` and fills it in ``steps`` rounds. In
every round the transformer predicts all positions at once; a token is drawn for every
still-masked position (``temperature``, optional ``top_k`` / ``top_p``), and the least
confident draws are masked again so that the number of masked positions follows the cosine
schedule ``N * cos(pi/2 * (t+1)/steps)`` down to zero. Confidence is the log-probability of
the drawn token plus Gumbel noise whose scale is annealed linearly to zero over the rounds
(``mask_temperature``), which keeps early rounds exploratory.

With ``guidance_scale != 1`` each round evaluates the conditional and the unconditional
(null class) predictions in one batched forward and uses
``uncond + guidance_scale * (cond - uncond)``; so a sample costs ``steps`` network
evaluations, or ``2 * steps`` with guidance. The per-class baseline
(``conditioning="per_class"``) has no unconditional model, so guidance does not apply to
it and is skipped.

Randomness is per sample: sample ``j`` draws all of its noise (a fixed number of uniforms per
round, on the CPU) from its own `torch.Generator`, so its tokens depend only on its label,
its generator and the settings, never on which other samples share the batch or on the
device.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from tumoraug.config import C, Config, check
from tumoraug.errors import ConfigError


def per_sample_seeds(seed: int, n: int, start: int = 0) -> list[int]:
    """Derive the seeds of samples ``start .. start+n-1`` from one integer ``seed``.

    Seed ``j`` depends only on ``(seed, j)`` (through `numpy.random.SeedSequence`), so a run
    of 8 samples and a run of 100 share their first 8 samples.
    """
    if n < 0 or start < 0:
        raise ValueError(f"n and start must be >= 0, got n={n}, start={start}")
    return [
        int(np.random.SeedSequence([int(seed) & 0xFFFFFFFFFFFFFFFF, j]).generate_state(1)[0])
        for j in range(start, start + n)
    ]


def make_rngs(seeds: Sequence[int]) -> list[torch.Generator]:
    """One CPU `torch.Generator` per seed."""
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


class GuidedSteps:
    """What settings of ``steps`` network passes with classifier-free guidance derive: each
    guided pass evaluates the conditional and the unconditional prediction."""

    steps: int
    guidance_scale: float

    @property
    def guided(self) -> bool:
        """Whether classifier-free guidance is on (``guidance_scale != 1``)."""
        return self.guidance_scale != 1.0

    @property
    def network_evaluations(self) -> int:
        """Network evaluations per sample: ``steps``, doubled when guidance is on."""
        return self.steps * (2 if self.guided else 1)


@dataclasses.dataclass
class SamplingConfig(GuidedSteps, Config):
    """How a token grid is decoded: the only place where sampling defaults live.

    ``steps`` parallel decoding rounds; ``guidance_scale`` of classifier-free guidance
    (1 turns it off); ``temperature`` of the token draw (0 takes the most likely token);
    optional ``top_k`` / ``top_p`` filtering; ``mask_temperature`` scales the Gumbel noise
    added to the confidences that choose which draws are masked again.
    """

    steps: int = 12
    guidance_scale: float = 1.5
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    mask_temperature: float = 4.5

    def validate(self) -> None:
        name = type(self).__name__
        check(
            isinstance(self.steps, int) and not isinstance(self.steps, bool) and self.steps >= 1,
            name, "steps", "an int >= 1", self.steps,
        )  # fmt: skip
        for field in ("guidance_scale", "temperature", "mask_temperature"):
            value = getattr(self, field)
            check(
                isinstance(value, int | float) and math.isfinite(value) and value >= 0,
                name, field, "a finite number >= 0", value,
            )  # fmt: skip
        check(
            self.top_k is None or (isinstance(self.top_k, int) and self.top_k >= 1),
            name, "top_k", "None or an int >= 1", self.top_k,
        )  # fmt: skip
        check(
            self.top_p is None
            or (isinstance(self.top_p, int | float) and math.isfinite(self.top_p)
                and 0 < self.top_p <= 1),
            name, "top_p", "None or a number in (0, 1]", self.top_p,
        )  # fmt: skip


def check_settings(sampling: C | None, kind: type[C]) -> C:
    """``sampling`` itself when it is a ``kind`` config (each generator has its own settings
    class), the defaults for None, else a `ConfigError` naming the class it takes."""
    if sampling is None:
        return kind()
    if not isinstance(sampling, kind):
        raise ConfigError(
            f"sampling must be a tumoraug.{kind.__name__} or None for this generator, got "
            f"{type(sampling).__name__}"
        )
    return sampling


def check_sampling(sampling: SamplingConfig | None) -> SamplingConfig:
    """``sampling`` itself, or the `SamplingConfig` defaults for None; else `ConfigError`."""
    return check_settings(sampling, SamplingConfig)


def filter_logits(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """Set logits outside the ``top_k`` largest / the ``top_p`` nucleus to ``-inf``."""
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        before = probs.cumsum(dim=-1) - probs  # mass strictly above each token
        drop_sorted = before > top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


@torch.no_grad()
def sample_tokens(
    model: nn.Module,
    labels: torch.Tensor,
    rngs: Sequence[torch.Generator],
    sampling: SamplingConfig | None = None,
    *,
    callback: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Decode ``len(labels)`` token grids ``(B, d, h, w)`` from all-``[MASK]``.

    ``model`` is a `MaskedTransformer` (or anything with its ``config`` and call signature);
    ``labels`` are class indices (mixed labels are fine); ``rngs`` one `torch.Generator` per
    sample; ``sampling`` the settings (`SamplingConfig` defaults when None);
    ``callback(round, steps)`` after each round.
    """
    sampling = sampling or SamplingConfig()
    steps, temperature = sampling.steps, sampling.temperature
    labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    if len(rngs) != len(labels):
        raise ValueError(f"got {len(rngs)} rngs for {len(labels)} samples: one rng per sample")
    config = model.config
    device = next(model.parameters()).device
    batch, grid = len(labels), tuple(config.token_grid)
    total = math.prod(grid)
    labels = labels.to(device)
    guided = sampling.guided and config.conditioning == "class"
    tokens = torch.full((batch, total), config.mask_id, dtype=torch.long, device=device)
    masked = total  # positions still masked in every sample (tracked here: no host sync)
    for step in range(steps):
        noise = torch.stack([torch.rand(2, total, generator=g) for g in rngs]).to(device)
        unknown = tokens == config.mask_id
        if guided:
            null = torch.full_like(labels, config.null_class)
            both = model(tokens.repeat(2, 1).reshape(2 * batch, *grid), torch.cat([labels, null]))
            cond, uncond = both.float().reshape(2, batch, total, -1).unbind(0)
            logits = uncond + sampling.guidance_scale * (cond - uncond)
        else:
            logits = model(tokens.reshape(batch, *grid), labels).float().reshape(batch, total, -1)
        logits = filter_logits(logits, sampling.top_k, sampling.top_p)
        if temperature == 0:
            drawn = logits.argmax(dim=-1)
            log_probs = logits.log_softmax(dim=-1)
        else:
            log_probs = (logits / temperature).log_softmax(dim=-1)
            cdf = log_probs.exp().cumsum(dim=-1)
            target = noise[:, 0, :, None] * cdf[..., -1:]
            drawn = torch.searchsorted(cdf, target).squeeze(-1).clamp_max(logits.shape[-1] - 1)
        drawn = torch.where(unknown, drawn, tokens)
        confidence = log_probs.gather(-1, drawn[..., None]).squeeze(-1)
        remaining = math.floor(total * math.cos(math.pi / 2 * (step + 1) / steps))
        remaining = 0 if step == steps - 1 else min(max(remaining, 0), masked - 1)
        if remaining > 0:
            gumbel = -torch.log(-torch.log(noise[:, 1].clamp(1e-20, 1 - 1e-7)))
            scale = sampling.mask_temperature * (1 - (step + 1) / steps)
            confidence = confidence + scale * gumbel
            confidence = confidence.masked_fill(~unknown, float("inf"))
            remask = torch.zeros_like(unknown)
            remask.scatter_(1, confidence.topk(remaining, dim=1, largest=False).indices, True)
            drawn = drawn.masked_fill(remask, config.mask_id)
        masked = max(remaining, 0)
        tokens = drawn
        if callback is not None:
            callback(step + 1, steps)
    return tokens.reshape(batch, *grid)
