"""The 3D-αWGAN baseline (Kwon et al. 2019), made class-conditional.

Kwon et al., "Generation of 3D brain MRI using auto-encoding generative adversarial
networks" (MICCAI 2019), train four networks together: an encoder ``E`` (ROI -> latent code),
a generator ``G`` (code -> ROI), a discriminator ``D`` on volumes and a code discriminator
``C`` on codes, with WGAN-GP losses (`tumoraug.training.alpha_wgan`). Sampling needs ``G``
alone: ``G(z, y)`` with ``z ~ N(0, I)``.

The paper's model is unconditional (one model per grade would be the direct port). Here one
model covers both grades:

* ``G`` gets a learned label embedding concatenated to the code (a conditional GAN);
* ``D`` and ``C`` are projection critics (Miyato & Koyama 2018): an unconditional score
  plus the inner product of pooled features with a per-class embedding (zero at
  initialisation, so training starts from the paper's unconditional critics). ``C``'s
  projection makes the codes of each grade, not only of all ROIs, look like the prior;
* ``E`` is unconditional: a ROI shows its grade, and the grade reaches ``G`` directly.

GroupNorm replaces the paper's BatchNorm in ``E``, ``G`` and ``D`` (``C`` has no norm, see
`CodeDiscriminator`): a sample must not depend on its batch, both for batch-invariant
generation and because the gradient penalty is defined per sample. Shapes: ROIs
``(B, C, S, S, S)`` in [-1, 1]; codes ``(B, latent_dim)``; labels ``(B,)`` long (0 LGG,
1 HGG); critic scores ``(B,)``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
from torch import nn

from tumoraug.checkpoint import PretrainedMixin
from tumoraug.config import Config, channel_names, check, check_modalities
from tumoraug.errors import DataError
from tumoraug.models.conv import Conv3d
from tumoraug.models.vqgan import group_norm

BASE_SIZE = 4
"""Edge of the lowest-resolution grid: the critics end, and ``G`` starts, at 4³."""


@dataclasses.dataclass
class AlphaWGANConfig(Config):
    """Architecture of `AlphaWGAN` (how it is trained: `AlphaWGANRecipe`).

    ``widths`` are the channels per resolution, from ``roi_size``/2 down to 4³, shared by
    ``E`` and ``D`` (going down) and ``G`` (going up), as in the paper (its 64³ model is
    ``widths=(64, 128, 256, 512)``, ``latent_dim=1000``, ``code_hidden=4096``); hence
    ``roi_size == 4 * 2**len(widths)``. ``label_dim`` is the size of ``G``'s label
    embedding, ``code_hidden`` the width of ``C``'s two hidden layers. ``modalities`` names
    the input channels (as in `TokenizerConfig`; empty: `channel_names` decides).
    Presets: ``"tiny"`` (16³, tests) and ``"small32"`` (32³; its ``G`` has 1.23 M
    parameters, the demo generator's two stages 1.24 M: comparisons at matched size).
    """

    in_channels: int = 1
    roi_size: int = 32
    widths: tuple[int, ...] = (32, 64, 128)
    latent_dim: int = 100
    label_dim: int = 16
    code_hidden: int = 512
    norm_groups: int = 8
    num_classes: int = 2
    modalities: tuple[str, ...] = ()

    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": {
            "roi_size": 16,
            "widths": (4, 8),
            "latent_dim": 16,
            "label_dim": 4,
            "code_hidden": 32,
            "norm_groups": 4,
        },
        "small32": {},
    }

    @property
    def channel_names(self) -> tuple[str, ...]:
        """The names of the input channels (see `tumoraug.config.channel_names`)."""
        return channel_names(self.modalities, self.in_channels)

    def validate(self) -> None:
        name = type(self).__name__
        for field in (
            "in_channels", "roi_size", "latent_dim", "label_dim", "code_hidden", "norm_groups",
        ):  # fmt: skip
            value = getattr(self, field)
            check(
                isinstance(value, int) and not isinstance(value, bool) and value > 0,
                name, field, "a positive int", value,
            )  # fmt: skip
        check(
            len(self.widths) >= 1 and all(isinstance(w, int) and w > 0 for w in self.widths),
            name, "widths", "a non-empty tuple of positive ints", self.widths,
        )  # fmt: skip
        side = BASE_SIZE * 2 ** len(self.widths)
        check(
            self.roi_size == side,
            name, "roi_size", f"{side} = 4 * 2**len(widths) for widths={self.widths}",
            self.roi_size,
        )  # fmt: skip
        check(self.num_classes >= 2, name, "num_classes", "an int >= 2", self.num_classes)
        check_modalities(name, self.modalities, self.in_channels)


def _down_stack(config: AlphaWGANConfig) -> nn.Sequential:
    """The paper's critic body: stride-2 4³ convolutions ``S -> 4``, LeakyReLU(0.2), a norm
    after every convolution but the first."""
    layers: list[nn.Module] = []
    channels = config.in_channels
    for i, width in enumerate(config.widths):
        layers.append(Conv3d(channels, width, 4, stride=2, padding=1))
        if i > 0:
            layers.append(group_norm(width, config.norm_groups))
        layers.append(nn.LeakyReLU(0.2))
        channels = width
    return nn.Sequential(*layers)


class AlphaEncoder(nn.Module):
    """ROI ``(B, C, S, S, S)`` -> code ``(B, latent_dim)``: the critic body and a 4³
    convolution without padding (the paper's encoder is its discriminator with
    ``latent_dim`` outputs)."""

    def __init__(self, config: AlphaWGANConfig) -> None:
        super().__init__()
        self.body = _down_stack(config)
        self.head = Conv3d(config.widths[-1], config.latent_dim, BASE_SIZE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x)).flatten(1)  # (B, latent, 1, 1, 1) -> (B, latent)


class AlphaGenerator(nn.Module):
    """Code ``(B, latent_dim)`` and labels ``(B,)`` -> ROI ``(B, C, S, S, S)`` in [-1, 1].

    ``[z, embed(y)]`` -> a 4³ transposed convolution (a linear map onto the 4³ grid), then
    per level a nearest 2x upsampling and a 3³ convolution (GroupNorm, ReLU) and ``tanh``.
    """

    def __init__(self, config: AlphaWGANConfig) -> None:
        super().__init__()
        widths, groups = config.widths, config.norm_groups
        self.label_embedding = nn.Embedding(config.num_classes, config.label_dim)
        code = config.latent_dim + config.label_dim
        self.stem = nn.Sequential(
            nn.ConvTranspose3d(code, widths[-1], BASE_SIZE, bias=False),
            group_norm(widths[-1], groups),
            nn.ReLU(),
        )
        layers: list[nn.Module] = []
        for i in reversed(range(1, len(widths))):
            layers += [
                nn.Upsample(scale_factor=2.0, mode="nearest"),
                Conv3d(widths[i], widths[i - 1], 3, padding=1, bias=False),
                group_norm(widths[i - 1], groups),
                nn.ReLU(),
            ]
        layers += [
            nn.Upsample(scale_factor=2.0, mode="nearest"),
            Conv3d(widths[0], config.in_channels, 3, padding=1),
            nn.Tanh(),
        ]
        self.body = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        code = torch.cat([z, self.label_embedding(labels).to(z.dtype)], dim=1)
        return self.body(self.stem(code[:, :, None, None, None]))  # (B, latent+label, 1, 1, 1)


class AlphaDiscriminator(nn.Module):
    """ROI ``(B, C, S, S, S)`` and labels ``(B,)`` -> critic scores ``(B,)``: the critic body,
    the paper's 4³ output convolution, plus the class projection of the pooled features."""

    def __init__(self, config: AlphaWGANConfig) -> None:
        super().__init__()
        self.body = _down_stack(config)
        self.head = Conv3d(config.widths[-1], 1, BASE_SIZE)
        self.projection = nn.Embedding(config.num_classes, config.widths[-1])
        nn.init.zeros_(self.projection.weight)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h = self.body(x)  # (B, widths[-1], 4, 4, 4)
        projected = (self.projection(labels) * h.mean(dim=(2, 3, 4))).sum(1)
        return self.head(h).flatten() + projected


class CodeDiscriminator(nn.Module):
    """Codes ``(B, latent_dim)`` and labels ``(B,)`` -> critic scores ``(B,)``: two hidden
    layers with LeakyReLU(0.2), then ``<w + embed(y), h> + b``: the linear output and the
    class projection in one inner product.

    No normalisation layer: a norm after the first layer would make the critic blind to the
    scale of the codes, the very thing that tells encoded codes from prior draws (with one,
    the encoder's codes drifted to a standard deviation of 6 unopposed).
    """

    def __init__(self, config: AlphaWGANConfig) -> None:
        super().__init__()
        hidden = config.code_hidden
        self.body = nn.Sequential(
            nn.Linear(config.latent_dim, hidden), nn.LeakyReLU(0.2),
            nn.Linear(hidden, hidden), nn.LeakyReLU(0.2),
        )  # fmt: skip
        self.weight = nn.Parameter(torch.randn(hidden) / hidden**0.5)
        self.bias = nn.Parameter(torch.zeros(()))
        self.projection = nn.Embedding(config.num_classes, hidden)
        nn.init.zeros_(self.projection.weight)

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h = self.body(z)  # (B, hidden)
        return ((self.weight + self.projection(labels)) * h).sum(1) + self.bias


class AlphaWGAN(PretrainedMixin, nn.Module):
    """The four networks of 3D-αWGAN (Kwon et al. 2019), class-conditional.

    Args:
        config: the architecture (`AlphaWGANConfig`).

    Submodules ``encoder`` (`AlphaEncoder`), ``generator`` (`AlphaGenerator`),
    ``code_discriminator`` (`CodeDiscriminator`) and ``discriminator``
    (`AlphaDiscriminator`); training calls them one by one. ``forward(x, labels)`` is the
    reconstruction ``G(E(x), y)``; `generate` maps codes to ROIs.
    """

    config_class = AlphaWGANConfig
    model_type = "alpha_wgan"

    def __init__(self, config: AlphaWGANConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = AlphaEncoder(config)
        self.generator = AlphaGenerator(config)
        self.code_discriminator = CodeDiscriminator(config)
        self.discriminator = AlphaDiscriminator(config)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise `DataError` unless ``x`` is a ``(B, C, S, S, S)`` batch of this size."""
        c, s = self.config.in_channels, self.config.roi_size
        if x.ndim != 5 or tuple(x.shape[1:]) != (c, s, s, s):
            raise DataError(
                f"AlphaWGAN input: expected (B, {c}, {s}, {s}, {s}), got {tuple(x.shape)}"
            )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """ROIs ``(B, C, S, S, S)`` -> codes ``(B, latent_dim)``."""
        self.check_input(x)
        return self.encoder(x)

    def generate(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Codes ``(B, latent_dim)`` and labels ``(B,)`` -> ROIs ``(B, C, S, S, S)`` in [-1, 1]."""
        if z.ndim != 2 or z.shape[1] != self.config.latent_dim or labels.shape != z.shape[:1]:
            raise DataError(
                f"AlphaWGAN.generate: expected codes (B, {self.config.latent_dim}) and labels "
                f"(B,), got {tuple(z.shape)} and {tuple(labels.shape)}"
            )
        return self.generator(z, labels)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.generate(self.encode(x), labels)

    def sampling_parameters(self) -> int:
        """Parameters that sampling uses (the generator's)."""
        return sum(p.numel() for p in self.generator.parameters())


def gradient_penalty(
    critic_scores: torch.Tensor, inputs: torch.Tensor, weight: float
) -> torch.Tensor:
    """WGAN-GP's ``weight * mean((||d score / d input||_2 - 1)²)`` per sample (Gulrajani et
    al. 2017), with the graph kept so the penalty trains the critic; ``inputs`` are the
    interpolates the scores were computed from (``requires_grad``). The norm is taken in
    float32 with the reference code's epsilon inside the square root."""
    (grad,) = torch.autograd.grad(critic_scores.sum(), inputs, create_graph=True)
    norm = (grad.float().flatten(1).pow(2).sum(1) + 1e-15).sqrt()
    return weight * (norm - 1.0).pow(2).mean()


def interpolate(real: torch.Tensor, fake: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    """Random points on the segments between ``real`` and ``fake`` samples (one uniform
    weight per sample, drawn on the CPU from ``rng``), ready for `gradient_penalty`."""
    shape = (real.shape[0],) + (1,) * (real.ndim - 1)
    alpha = torch.rand(shape, generator=rng).to(real.device)
    return (alpha * real.detach().float() + (1 - alpha) * fake.detach().float()).requires_grad_()
