"""Stage 1: a 3D VQGAN that turns a tumor ROI into a grid of discrete tokens and back.

Reading order: building blocks (residual block, attention, resampling), `Encoder3D`,
`VectorQuantizer`, `Decoder3D`, and `VQGAN3D`, which ties them together with an importance
scorer of `tumoraug.models.importance`. The configuration is
`tumoraug.config.TokenizerConfig`; the losses that are not part of the forward pass (GAN,
perceptual, grade classification) live in `tumoraug.models.discriminator` and
`tumoraug.training.tokenizer`.

Shapes: a batch of ROIs ``x`` is ``(B, C, S, S, S)`` in [-1, 1]; the latent grid is
``(B, embed_dim, d, h, w)`` with ``d = S / downsample_factor``; tokens are ``(B, d, h, w)``.

Choices that differ from the 2D Taming VQGAN (reasons in ``docs/tokenizer.md``):

* the codebook is **l2-normalised** (cosine-similarity lookup, as in ViT-VQGAN): codes are
  ordinary parameters trained by the optimizer, so data-parallel training needs no extra
  synchronisation and resume needs no extra state; dead codes are restarted from encoder
  outputs.
* every token gets an **importance score**: the paper's class-discriminative saliency of
  the pre-quantisation features (`tumoraug.models.importance`); the decoder does not see it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from tumoraug.checkpoint import PretrainedMixin
from tumoraug.config import TokenizerConfig
from tumoraug.errors import DataError
from tumoraug.models.conv import Conv3d
from tumoraug.models.importance import GradeClassifierHead, SaliencyScorer


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    """GroupNorm with the largest group count <= ``groups`` that divides ``channels``."""
    return nn.GroupNorm(math.gcd(channels, groups), channels, eps=1e-6)


class ResBlock3D(nn.Module):
    """Pre-activation residual block: (GroupNorm, SiLU, 3³ conv) twice, 1³ conv on the skip."""

    def __init__(self, in_channels: int, out_channels: int, groups: int) -> None:
        super().__init__()
        self.norm1 = group_norm(in_channels, groups)
        self.conv1 = Conv3d(in_channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(out_channels, groups)
        self.conv2 = Conv3d(out_channels, out_channels, 3, padding=1)
        self.skip = (
            Conv3d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class AttnBlock3D(nn.Module):
    """Single-head self-attention over all voxels of the lowest-resolution grid."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.norm = group_norm(channels, groups)
        self.qkv = Conv3d(channels, 3 * channels, 1)
        self.proj = Conv3d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, d, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, 1, c, d * h * w).transpose(-1, -2).unbind(1)
        out = F.scaled_dot_product_attention(q, k, v)  # (b, 1, dhw, c)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, d, h, w))


class Downsample3D(nn.Module):
    """Halve each spatial axis with a strided 3³ convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = Conv3d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample3D(nn.Module):
    """Double each spatial axis: nearest-neighbour upsampling, then a 3³ convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = Conv3d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Stack(nn.Module):
    """A sequence of blocks, optionally run with activation checkpointing to save memory."""

    def __init__(self, blocks: list[nn.Module]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.gradient_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x


def _mid_blocks(channels: int, config: TokenizerConfig) -> list[nn.Module]:
    blocks: list[nn.Module] = []
    for i in range(config.num_mid_blocks):
        blocks.append(ResBlock3D(channels, channels, config.norm_groups))
        if config.attention and i == 0:
            blocks.append(AttnBlock3D(channels, config.norm_groups))
    if config.attention and not blocks:
        blocks.append(AttnBlock3D(channels, config.norm_groups))
    return blocks


class Encoder3D(nn.Module):
    """ROI ``(B, C, S, S, S)`` -> continuous latent ``(B, embed_dim, S/f, S/f, S/f)``.

    One level per entry of ``channel_mult``: ``num_res_blocks`` residual blocks, then a
    stride-2 downsampling except after the last level; then the middle blocks (residual
    blocks with attention after the first one when ``attention`` is on) and a projection.
    """

    def __init__(self, config: TokenizerConfig) -> None:
        super().__init__()
        widths = [config.base_channels * m for m in config.channel_mult]
        self.conv_in = Conv3d(config.in_channels, widths[0], 3, padding=1)
        blocks: list[nn.Module] = []
        channels = widths[0]
        for level, width in enumerate(widths):
            for _ in range(config.num_res_blocks):
                blocks.append(ResBlock3D(channels, width, config.norm_groups))
                channels = width
            if level < len(widths) - 1:
                blocks.append(Downsample3D(channels))
        blocks += _mid_blocks(channels, config)
        self.body = _Stack(blocks)
        self.norm_out = group_norm(channels, config.norm_groups)
        self.conv_out = Conv3d(channels, config.embed_dim, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(self.conv_in(x))
        return self.conv_out(F.silu(self.norm_out(h)))


@dataclasses.dataclass
class QuantizerOutput:
    """What `VectorQuantizer.forward` returns."""

    z_q: torch.Tensor  # (B, D, d, h, w) unit-norm codes, straight-through gradient to z_e
    tokens: torch.Tensor  # (B, d, h, w) code indices
    codebook_loss: torch.Tensor  # ||sg(z) - e||², moves the codes (scalar)
    commitment_loss: torch.Tensor  # ||z - sg(e)||², keeps the encoder near its codes
    perplexity: torch.Tensor  # exp(entropy) of the batch's code histogram
    fraction_used: torch.Tensor  # share of the codebook used by this batch


def _full_precision(device: torch.device) -> contextlib.AbstractContextManager:
    """Turn autocast off (code lookup in float32); a no-op on devices without autocast."""
    if device.type in ("cpu", "cuda"):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


class VectorQuantizer(nn.Module):
    """Nearest-code lookup in an l2-normalised codebook with a straight-through estimator.

    Latents and codes are both projected to the unit sphere and matched by cosine
    similarity. The forward pass returns the codebook term ``||sg(z) - e||²`` and the
    commitment term ``||z - sg(e)||²`` of VQ-VAE separately (their weights are part of the
    training recipe). During training the number of times each code was picked
    is accumulated in the ``usage`` buffer (saved with the weights, so resume is exact);
    `restart_dead_codes` replaces codes never picked since the last restart by encoder
    outputs, so that the codebook stays in use.
    """

    def __init__(self, codebook_size: int, dim: int) -> None:
        super().__init__()
        self.codebook_size = codebook_size
        self.codebook = nn.Parameter(torch.randn(codebook_size, dim))
        self.register_buffer("usage", torch.zeros(codebook_size))

    def normalized_codebook(self) -> torch.Tensor:
        """The codes as unit vectors, float32 ``(K, D)``."""
        return F.normalize(self.codebook.float(), dim=1)

    def check_tokens(self, tokens: torch.Tensor, *, ids: bool = True) -> None:
        """Raise `DataError` unless ``tokens`` is an integer ``(B, d, h, w)`` grid of ids in
        ``[0, codebook_size)``; ``ids=False`` checks only dtype and shape (no host sync)."""
        if tokens.dtype not in (torch.int64, torch.int32) or tokens.ndim != 4:
            raise DataError(
                f"tokens: expected an integer tensor (B, d, h, w), got {tokens.dtype} "
                f"{tuple(tokens.shape)}"
            )
        if not ids or not tokens.numel() or tokens.is_meta:
            return
        low, high = torch.stack([tokens.min(), tokens.max()]).tolist()  # one host sync
        if low < 0 or high >= self.codebook_size:
            raise DataError(
                f"tokens: ids must be in [0, {self.codebook_size}), got [{low}, {high}]"
            )

    def embed(self, tokens: torch.Tensor, *, check_ids: bool = True) -> torch.Tensor:
        """Tokens ``(B, d, h, w)`` -> unit-norm code vectors ``(B, D, d, h, w)``.

        ``check_ids=False`` skips the range check of the ids, a host sync on every call, for
        grids known to be valid (the sampler's); a user's grid keeps the clear `DataError`.
        """
        self.check_tokens(tokens, ids=check_ids)
        return self.normalized_codebook()[tokens.long()].permute(0, 4, 1, 2, 3)

    def forward(self, z_e: torch.Tensor) -> QuantizerOutput:
        with _full_precision(z_e.device):
            b, dim, d, h, w = z_e.shape
            z = F.normalize(z_e.float().permute(0, 2, 3, 4, 1).reshape(-1, dim), dim=1)
            codes = self.normalized_codebook()
            indices = (z @ codes.t()).argmax(dim=1)
            e = codes[indices]
            codebook_loss = F.mse_loss(e, z.detach())
            commitment_loss = F.mse_loss(z, e.detach())
            z_q = z + (e - z).detach()
            counts = torch.zeros(self.codebook_size, device=z.device).index_add_(
                0, indices, torch.ones_like(z[:, 0])
            )
            if self.training:
                self.usage += counts.detach()
            probs = counts / counts.sum()
            perplexity = torch.exp(-(probs * torch.log(probs.clamp_min(1e-10))).sum())
            fraction_used = (counts > 0).float().mean()
        return QuantizerOutput(
            z_q=z_q.reshape(b, d, h, w, dim).permute(0, 4, 1, 2, 3),
            tokens=indices.reshape(b, d, h, w),
            codebook_loss=codebook_loss,
            commitment_loss=commitment_loss,
            perplexity=perplexity,
            fraction_used=fraction_used,
        )

    @torch.no_grad()
    def restart_dead_codes(self, z_e: torch.Tensor, generator: torch.Generator) -> int:
        """Move every code unused since the last call onto a random encoder output.

        ``z_e`` is a batch of encoder outputs ``(B, D, d, h, w)``; the choice of outputs is
        drawn from ``generator`` (CPU), so restarts are reproducible. Resets ``usage``;
        returns the number of restarted codes.
        """
        dead = (self.usage == 0).nonzero().flatten()
        self.usage.zero_()
        if dead.numel() == 0:
            return 0
        pool = F.normalize(z_e.detach().float().movedim(1, -1).reshape(-1, z_e.shape[1]), dim=1)
        pick = torch.randint(pool.shape[0], (dead.numel(),), generator=generator)
        self.codebook.data[dead.to(self.codebook.device)] = pool[pick.to(pool.device)].to(
            self.codebook.dtype
        )
        return int(dead.numel())


class Decoder3D(nn.Module):
    """Latent ``(B, embed_dim, d, h, w)`` -> ROI ``(B, C, S, S, S)`` (unclamped), mirroring
    `Encoder3D` with ``num_res_blocks + 1`` residual blocks per level."""

    def __init__(self, config: TokenizerConfig) -> None:
        super().__init__()
        widths = [config.base_channels * m for m in config.channel_mult]
        channels = widths[-1]
        self.conv_in = Conv3d(config.embed_dim, channels, 3, padding=1)
        blocks: list[nn.Module] = _mid_blocks(channels, config)
        for level in reversed(range(len(widths))):
            for _ in range(config.num_res_blocks + 1):
                blocks.append(ResBlock3D(channels, widths[level], config.norm_groups))
                channels = widths[level]
            if level > 0:
                blocks.append(Upsample3D(channels))
        self.body = _Stack(blocks)
        self.norm_out = group_norm(channels, config.norm_groups)
        self.conv_out = Conv3d(channels, config.in_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.body(self.conv_in(z))
        return self.conv_out(F.silu(self.norm_out(h)))


@dataclasses.dataclass
class VQGANOutput:
    """What `VQGAN3D.forward` returns (everything the training losses need)."""

    reconstruction: torch.Tensor  # (B, C, S, S, S), unclamped
    tokens: torch.Tensor  # (B, d, h, w)
    importance: torch.Tensor  # (B, d, h, w) in (0, 1)
    grade_logits: torch.Tensor | None  # (B, num_classes): classifier head at roi_size, else None
    z_e: torch.Tensor  # (B, D, d, h, w) encoder output (for dead-code restarts)
    codebook_loss: torch.Tensor  # moves the codes towards the encoder outputs
    commitment_loss: torch.Tensor  # keeps the encoder outputs near their codes
    perplexity: torch.Tensor
    fraction_used: torch.Tensor


class VQGAN3D(PretrainedMixin, nn.Module):
    """The stage-1 tokenizer: `Encoder3D` -> `VectorQuantizer` -> `Decoder3D`, with importance.

    Inference API: ``encode(x) -> (tokens, importance)``, ``decode(tokens) -> volume`` in
    [-1, 1], ``importance(tokens)``; ``forward(x)`` returns a `VQGANOutput` for training.
    """

    config_class = TokenizerConfig
    model_type = "vqgan3d"

    def __init__(self, config: TokenizerConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder3D(config)
        self.quantizer = VectorQuantizer(config.codebook_size, config.embed_dim)
        self.importance_head = SaliencyScorer(config.embed_dim)
        self.grade_head = GradeClassifierHead(
            config.embed_dim, math.prod(config.token_grid), config.importance_hidden,
            config.num_classes,
        )  # fmt: skip
        self.decoder = Decoder3D(config)

    def _check_input(self, x: torch.Tensor) -> None:
        f, c = self.config.downsample_factor, self.config.in_channels
        if x.ndim != 5 or x.shape[1] != c or any(s % f for s in x.shape[2:]):
            raise DataError(
                f"VQGAN3D input: expected (B, {c}, D, H, W) with D, H, W multiples of {f}, "
                f"got {tuple(x.shape)}"
            )

    def forward(self, x: torch.Tensor) -> VQGANOutput:
        self._check_input(x)
        z_e = self.encoder(x)
        q = self.quantizer(z_e)
        s = self.importance_head(z_e)
        # The grade head is built for the configured token grid; other ROI sizes still encode.
        fits = tuple(z_e.shape[2:]) == tuple(self.config.token_grid)
        logits = self.grade_head(z_e, s) if fits else None
        return VQGANOutput(
            reconstruction=self.decoder(q.z_q.to(z_e.dtype)),
            tokens=q.tokens,
            importance=s,
            grade_logits=logits,
            z_e=z_e,
            codebook_loss=q.codebook_loss,
            commitment_loss=q.commitment_loss,
            perplexity=q.perplexity,
            fraction_used=q.fraction_used,
        )

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ROIs ``(B, C, S, S, S)`` -> tokens ``(B, d, h, w)`` long, importance in (0, 1)."""
        self._check_input(x)
        z_e = self.encoder(x)
        return self.quantizer(z_e).tokens, self.importance_head(z_e)

    def importance(self, tokens: torch.Tensor) -> torch.Tensor:
        """Importance scores ``(B, d, h, w)`` of any token grid, e.g. a generated one; the code
        vectors stand in for the pre-quantisation features."""
        return self.importance_head(self.quantizer.embed(tokens))

    def decode(self, tokens: torch.Tensor, *, check_ids: bool = True) -> torch.Tensor:
        """Tokens ``(B, d, h, w)`` -> ROIs ``(B, C, S, S, S)`` clamped to [-1, 1];
        ``check_ids=False``: see `VectorQuantizer.embed`."""
        return self.decoder(self.quantizer.embed(tokens, check_ids=check_ids)).clamp(-1.0, 1.0)

    @property
    def last_layer(self) -> torch.Tensor:
        """Weight of the decoder's output convolution (for the adaptive GAN weight)."""
        return self.decoder.conv_out.weight

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute encoder/decoder activations in the backward pass (saves memory at 128³)."""
        self.encoder.body.gradient_checkpointing = enabled
        self.decoder.body.gradient_checkpointing = enabled
