"""Stage 2: a bidirectional masked transformer over the 3D token grid, conditioned on the grade.

The input is a ``(B, d, h, w)`` grid of token ids from the tokenizer's codebook, where some
positions hold the extra ``[MASK]`` id (``config.mask_id``), and a ``(B,)`` class index
(0 LGG, 1 HGG, ``config.null_class`` for "no class", used by classifier-free guidance). The
grid is flattened to ``d*h*w`` positions, a class token is prepended, and pre-norm blocks
with full (non-causal) attention predict, at every grid position, logits over the codebook.
Positions carry a learned embedding, either one vector per position ("learned") or the sum
of one vector per axis coordinate ("factorized", far fewer parameters at 16³).

`PerClassTransformer` is the paper's 3D-VQGAN baseline (``conditioning="per_class"``): one
unconditional `MaskedTransformer` per grade behind the same call signature, so that
training, sampling and `TumorGenerator` run it unchanged. `build_transformer` and
`transformer_class` pick the class a config asks for.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tumoraug.checkpoint import PretrainedMixin
from tumoraug.config import TransformerConfig
from tumoraug.errors import ConfigError


class SelfAttention(nn.Module):
    """Multi-head bidirectional self-attention through `F.scaled_dot_product_attention`.

    Dropout is applied to the output, not to the attention weights: that keeps the fused
    (flash / memory-efficient) kernels usable on CPU and GPU during training.
    """

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.heads, dim // self.heads).unbind(2)
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        )
        return self.dropout(self.proj(out.transpose(1, 2).reshape(batch, length, dim)))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm(x))`` then ``x + mlp(norm(x))``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PositionalEmbedding3D(nn.Module):
    """Learned positions of a (d, h, w) grid: per position, or factorised as a per-axis sum."""

    def __init__(self, grid: tuple[int, int, int], dim: int, kind: str) -> None:
        super().__init__()
        self.grid = tuple(grid)
        self.kind = kind
        if kind == "learned":
            self.table = nn.Parameter(torch.zeros(1, grid[0] * grid[1] * grid[2], dim))
        else:
            self.axes = nn.ParameterList([nn.Parameter(torch.zeros(size, dim)) for size in grid])
        for param in self.parameters():
            nn.init.trunc_normal_(param, std=0.02)

    def forward(self) -> torch.Tensor:
        """Return the ``(1, d*h*w, dim)`` embedding in row-major (d, h, w) order."""
        if self.kind == "learned":
            return self.table
        ed, eh, ew = self.axes
        grid = ed[:, None, None] + eh[None, :, None] + ew[None, None, :]
        return grid.reshape(1, -1, grid.shape[-1])


class MaskedTransformer(PretrainedMixin, nn.Module):
    """Class-conditional bidirectional transformer predicting codebook tokens at every position."""

    config_class = TransformerConfig
    model_type = "masked_transformer"

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        if config.conditioning != "class":
            raise ConfigError(
                f"MaskedTransformer: conditioning={config.conditioning!r} is built by "
                "PerClassTransformer; use build_transformer(config)"
            )
        self.config = config
        self.token_embedding = nn.Embedding(config.codebook_size + 1, config.dim)
        self.class_embedding = nn.Embedding(config.num_classes + 1, config.dim)
        self.position = PositionalEmbedding3D(config.token_grid, config.dim, config.pos_embedding)
        self.class_position = nn.Parameter(torch.zeros(1, 1, config.dim))
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            Block(config.dim, config.heads, config.mlp_ratio, config.dropout)
            for _ in range(config.depth)
        )
        self.norm = nn.LayerNorm(config.dim)
        self.head = nn.Linear(config.dim, config.codebook_size)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.trunc_normal_(module.weight, std=0.02)

    @property
    def mask_id(self) -> int:
        """Token id of ``[MASK]``."""
        return self.config.mask_id

    @property
    def null_class(self) -> int:
        """Class index meaning "no class" (classifier-free guidance)."""
        return self.config.null_class

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Map ``tokens (B, d, h, w)`` and ``labels (B,)`` to logits ``(B, d, h, w, codebook)``."""
        if tuple(tokens.shape[1:]) != tuple(self.config.token_grid):
            raise ValueError(
                f"MaskedTransformer: token grid {tuple(tokens.shape[1:])} does not match the "
                f"configured token_grid {tuple(self.config.token_grid)}"
            )
        batch = tokens.shape[0]
        x = self.token_embedding(tokens.reshape(batch, -1)) + self.position()
        cls = self.class_embedding(labels.reshape(batch, 1)) + self.class_position
        x = self.dropout(torch.cat([cls, x], dim=1))
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.norm(x[:, 1:]))
        return logits.reshape(*tokens.shape, self.config.codebook_size)


class PerClassTransformer(PretrainedMixin, nn.Module):
    """The 3D-VQGAN baseline: one unconditional `MaskedTransformer` per grade.

    Each sample is routed to the network of its grade, which sees only the null class, so
    every member learns the token distribution of one grade alone. There is no
    unconditional model to guide with: labels must be grades.
    """

    config_class = TransformerConfig
    model_type = MaskedTransformer.model_type

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        if config.conditioning != "per_class":
            raise ConfigError(
                f"PerClassTransformer: needs conditioning='per_class', got {config.conditioning!r}"
            )
        self.config = config
        member = config.replace(conditioning="class")
        self.members = nn.ModuleList(MaskedTransformer(member) for _ in range(config.num_classes))

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Map ``tokens (B, d, h, w)`` and grades ``labels (B,)`` to ``(B, d, h, w, codebook)``."""
        labels = labels.reshape(-1)
        if bool(((labels < 0) | (labels >= self.config.num_classes)).any()):
            raise ValueError(
                "PerClassTransformer: labels must be grades 0.."
                f"{self.config.num_classes - 1}; the per-class baseline has no null class"
            )
        parts, unused = [], []
        for grade, member in enumerate(self.members):
            index = (labels == grade).nonzero().squeeze(1)
            if index.numel() == 0:
                unused.append(member)
                continue
            null = torch.full_like(index, member.null_class)
            parts.append((index, member(tokens[index], null)))
        logits = parts[0][1].new_empty((labels.shape[0], *parts[0][1].shape[1:]))
        for index, part in parts:
            logits[index] = part
        if self.training and unused:
            # Keep every member in the graph (zero gradient), as DistributedDataParallel
            # expects a gradient for each parameter on every step.
            logits = logits + sum(p.sum() for m in unused for p in m.parameters()) * 0.0
        return logits


def transformer_class(config: TransformerConfig) -> type[MaskedTransformer | PerClassTransformer]:
    """The stage-2 model class a config asks for (``conditioning``)."""
    return PerClassTransformer if config.conditioning == "per_class" else MaskedTransformer


def build_transformer(config: TransformerConfig) -> MaskedTransformer | PerClassTransformer:
    """A freshly initialised stage-2 model for ``config``."""
    return transformer_class(config)(config)
