"""Per-token importance scores of the tokenizer: which latent tokens matter.

Two definitions, chosen by ``TokenizerConfig.importance``:

* ``"classifier"`` (the paper's, the default): `SaliencyScorer` scores the *pre-quantisation*
  encoder features, the scores weight a normalised copy of those features, and
  `GradeClassifierHead` must tell HGG from LGG from the weighted copy alone. Trained with
  cross-entropy, the scores become class-discriminative saliency: high where the grade can be
  read. The codebook and the decoder see the unweighted features, so reconstruction does not
  depend on the scores.
* ``"gate"`` (tumoraug's earlier one, kept for the ablation and for models trained with it):
  `GateScorer` scores the *quantised* latent and the decoder sees
  ``s * z_q + (1 - s) * coarse(z_q)``, so that under a budget on the mean score the score
  marks the tokens that reconstruction needs most.

Shapes: features ``(B, D, d, h, w)``, scores ``(B, d, h, w)`` in (0, 1), logits ``(B, K)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


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
        self.conv = nn.Conv3d(dim, dim, 3, padding=1)
        self.out = nn.Conv3d(dim, 1, 1)
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


class GateScorer(nn.Module):
    """Quantised latent ``(B, D, d, h, w)`` -> one score in (0, 1) per token ``(B, d, h, w)``.

    Two 3³ convolutions see each token with its neighbours. `start_at` sets the output
    bias so that scores start near a chosen mean (the training recipe's budget).
    """

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(dim, hidden, 3, padding=1)
        self.conv2 = nn.Conv3d(hidden, hidden, 3, padding=1)
        self.out = nn.Conv3d(hidden, 1, 1)

    @torch.no_grad()
    def start_at(self, mean_score: float) -> None:
        """Set the output bias to ``logit(mean_score)``, so an untrained head scores about that."""
        self.out.bias.fill_(math.log(mean_score / (1.0 - mean_score)))

    def forward(self, z_q: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.conv2(F.silu(self.conv1(z_q))))
        return torch.sigmoid(self.out(h)).squeeze(1)
