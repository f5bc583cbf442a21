"""Per-token importance scores of the tokenizer: which latent tokens matter (the paper's map).

`SaliencyScorer` scores the *pre-quantisation* encoder features, the scores weight a
normalised copy of those features, and `GradeClassifierHead` must tell HGG from LGG from the
weighted copy alone. Trained with cross-entropy, the scores become class-discriminative
saliency: high where the grade can be read. The codebook and the decoder see the unweighted
features, so reconstruction does not depend on the scores. (tumoraug's earlier decoder gate
lost to this map in the issue-10 ablation and was removed: ``docs/results.md``.)

Shapes: features ``(B, D, d, h, w)``, scores ``(B, d, h, w)`` in (0, 1), logits ``(B, K)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tumoraug.models.conv import Conv3d


def _standardise(features: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit variance over all of (D, d, h, w) per sample (LayerNorm, no affine)."""
    return F.layer_norm(features, features.shape[1:])


class SaliencyScorer(nn.Module):
    """Pre-quantisation features ``(B, D, d, h, w)`` -> scores ``(B, d, h, w)`` in (0, 1).

    Standardise, a 3³ convolution that sees each token with its neighbours, ReLU, a 1³
    convolution to one channel, GroupNorm over the whole score map (so scores spread around
    the sigmoid's middle whatever the feature scale), sigmoid.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = Conv3d(dim, dim, 3, padding=1)
        self.out = Conv3d(dim, 1, 1)
        self.norm = nn.GroupNorm(1, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        h = self.out(F.relu(self.conv(_standardise(features))))
        return torch.sigmoid(self.norm(h)).squeeze(1)


class GradeClassifierHead(nn.Module):
    """Score-weighted features -> grade logits: flatten, linear, GroupNorm, ReLU, dropout, linear.

    It sees the standardised features multiplied by the scores, so only what the scores let
    through can tell the grades apart. Used in training only.
    """

    def __init__(self, dim: int, tokens: int, hidden: int, num_classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Flatten(),
            nn.Linear(dim * tokens, hidden),
            nn.GroupNorm(hidden // 32 if hidden % 32 == 0 else 1, hidden),  # 32 per group
            nn.ReLU(),
            nn.Dropout(0.2),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, features: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return self.body(_standardise(features) * scores.unsqueeze(1))
