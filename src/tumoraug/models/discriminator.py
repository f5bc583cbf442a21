"""The 3D patch discriminator of stage 1 and its adversarial losses.

`PatchDiscriminator3D` is the PatchGAN of pix2pix / Taming Transformers with 3D
convolutions: a stack of stride-2 4³ convolutions whose output is one real/fake logit per
overlapping patch. GroupNorm replaces BatchNorm so that a sample's logits do not depend on
the rest of its batch (which keeps data-parallel training equal to one large batch).

Losses: the hinge loss for the discriminator, ``-mean(D(x_rec))`` for the generator, and
the adaptive weight of Taming Transformers, which scales the generator's adversarial term so
that its gradient at the decoder's last layer is as large as the reconstruction loss's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tumoraug.models.conv import Conv3d
from tumoraug.models.vqgan import group_norm


class PatchDiscriminator3D(nn.Module):
    """Volume ``(B, C, S, S, S)`` -> patch logits ``(B, 1, p, p, p)``.

    ``layers`` stride-2 convolutions (widths ``channels * min(2**i, 8)``), one stride-1
    convolution and a 1-channel output convolution. The patch grid has side
    ``S / 2**layers - 2``, so ``S >= 3 * 2**layers`` (16³ with 2 layers, 128³ with 3).
    """

    def __init__(self, in_channels: int, channels: int = 32, layers: int = 3) -> None:
        super().__init__()
        blocks: list[nn.Module] = [
            Conv3d(in_channels, channels, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
        ]
        width = channels
        for i in range(1, layers + 1):
            out = channels * min(2**i, 8)
            stride = 2 if i < layers else 1
            blocks += [
                Conv3d(width, out, 4, stride=stride, padding=1, bias=False),
                group_norm(out, 8),
                nn.LeakyReLU(0.2),
            ]
            width = out
        blocks.append(Conv3d(width, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*blocks)
        for module in self.modules():
            if isinstance(module, nn.Conv3d):
                nn.init.normal_(module.weight, 0.0, 0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss: ``mean(relu(1 - D(x))) + mean(relu(1 + D(x_rec)))``, halved."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def generator_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """The generator's adversarial loss ``-mean(D(x_rec))``."""
    return -logits_fake.mean()


def adaptive_weight(
    rec_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor, scale: float
) -> torch.Tensor:
    """Taming's ``scale * ||grad rec|| / (||grad g|| + 1e-4)`` at ``last_layer``, clamped
    to [0, 1e4] and detached."""
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    weight = rec_grad.norm() / (g_grad.norm() + 1e-4)
    return (weight.clamp(0.0, 1e4) * scale).detach()
