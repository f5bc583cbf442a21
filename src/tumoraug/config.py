"""Dataclass configs with JSON round-trip, validation and named presets.

Every model config is a dataclass deriving from `Config`: it converts to and from plain
JSON-compatible dicts (so that it can sit beside the weights as ``config.json``), rejects
unknown fields with a message naming them, and validates its values in ``validate()``.
Presets are registered per config class by name (``"brats128"``, ``"tiny"``).
"""

from __future__ import annotations

import dataclasses
import json
import re
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from tumoraug.errors import ConfigError

C = TypeVar("C", bound="Config")


@dataclasses.dataclass
class Config:
    """Base of all configs: JSON round-trip, unknown-field rejection, presets."""

    presets: ClassVar[dict[str, dict[str, Any]]] = {}

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise `ConfigError` naming the field when a value is out of range."""

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-compatible dict (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        """Build a config from a dict, rejecting unknown keys and coercing lists to tuples."""
        if not isinstance(data, dict):
            raise ConfigError(f"{cls.__name__}: expected a JSON object, got {type(data).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ConfigError(
                f"{cls.__name__}: unknown field(s) {', '.join(unknown)}; "
                f"known fields: {', '.join(fields)}"
            )
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for name, value in data.items():
            if isinstance(value, list) and "tuple" in str(hints.get(name, "")):
                value = tuple(value)
            kwargs[name] = value
        try:
            return cls(**kwargs)
        except TypeError as exc:
            raise ConfigError(f"{cls.__name__}: {exc}") from None

    def to_json(self, path: str | Path) -> None:
        """Write the config as pretty JSON."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_json(cls: type[C], path: str | Path) -> C:
        """Read a config written by `to_json`; errors name the file."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: not valid JSON ({exc})") from None
        try:
            return cls.from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None

    @classmethod
    def preset(cls: type[C], name: str, **overrides: Any) -> C:
        """Return the named preset, with ``overrides`` applied on top."""
        if name not in cls.presets:
            raise ConfigError(
                f"{cls.__name__}: unknown preset {name!r}; available: {', '.join(cls.presets)}"
            )
        return cls.from_dict({**cls.presets[name], **overrides})

    def replace(self: C, **changes: Any) -> C:
        """Return a copy with ``changes`` applied (validated)."""
        return self.from_dict({**self.to_dict(), **changes})


def check(condition: bool, owner: str, field: str, expected: str, value: Any) -> None:
    """Raise `ConfigError` ``"<owner>.<field>: expected <expected>, got <value>"`` unless true."""
    if not condition:
        raise ConfigError(f"{owner}.{field}: expected {expected}, got {value!r}")


@dataclasses.dataclass
class TransformerConfig(Config):
    """Stage 2 (`tumoraug.models.transformer`): the class-conditional masked transformer.

    Architecture only: how it is trained (masking, class dropout) is the
    `tumoraug.training.transformer.TransformerRecipe`. ``codebook_size`` and ``token_grid``
    must match the tokenizer; `train_transformer` fills them from the tokenizer. The
    vocabulary is the codebook plus one ``[MASK]`` id (``mask_id == codebook_size``); the
    class embedding has ``num_classes`` grades plus one null class (index ``num_classes``)
    used by classifier-free guidance. ``conditioning="per_class"`` builds the paper's
    3D-VQGAN baseline (one unconditional network per grade).
    """

    codebook_size: int = 1024
    token_grid: tuple[int, int, int] = (16, 16, 16)
    num_classes: int = 2
    dim: int = 512
    depth: int = 12
    heads: int = 8
    mlp_ratio: float = 4.0
    dropout: float = 0.1
    pos_embedding: str = "factorized"
    conditioning: str = "class"

    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "brats128": {"token_grid": (16, 16, 16), "dim": 512, "depth": 12, "heads": 8},
        # The paper's 8³ grid (TokenizerConfig "paper128") with brats128's width, depth and
        # heads, so that the two transformers differ by the grid alone (docs/tokenizer.md).
        "paper128": {"token_grid": (8, 8, 8), "codebook_size": 1024, "dim": 512, "depth": 12},
        "tiny": {"token_grid": (4, 4, 4), "codebook_size": 64, "dim": 64, "depth": 2, "heads": 4},
    }

    def baseline(self) -> TransformerConfig:
        """This architecture as the paper's 3D-VQGAN baseline: one unconditional network per
        grade (train it with `TransformerRecipe.baseline`: plain MaskGIT masking)."""
        return self.replace(conditioning="per_class")

    @property
    def mask_id(self) -> int:
        """Token id of ``[MASK]`` (one past the codebook)."""
        return self.codebook_size

    @property
    def null_class(self) -> int:
        """Class index of the unconditional (null) class used for guidance."""
        return self.num_classes

    @property
    def num_tokens(self) -> int:
        """Number of tokens in one grid, ``d*h*w``."""
        d, h, w = self.token_grid
        return d * h * w

    def validate(self) -> None:
        name = type(self).__name__
        check(self.codebook_size >= 2, name, "codebook_size", "an int >= 2", self.codebook_size)
        check(
            len(self.token_grid) == 3 and all(int(s) >= 1 for s in self.token_grid),
            name,
            "token_grid",
            "three positive ints (d, h, w)",
            self.token_grid,
        )
        check(self.num_classes >= 1, name, "num_classes", "an int >= 1", self.num_classes)
        check(
            self.dim >= 1 and self.depth >= 1,
            name,
            "dim/depth",
            "positive ints",
            (self.dim, self.depth),
        )
        check(
            self.heads >= 1 and self.dim % self.heads == 0,
            name,
            "heads",
            f"a divisor of dim={self.dim}",
            self.heads,
        )
        check(self.mlp_ratio > 0, name, "mlp_ratio", "a positive number", self.mlp_ratio)
        check(0 <= self.dropout < 1, name, "dropout", "a number in [0, 1)", self.dropout)
        check(
            self.pos_embedding in ("factorized", "learned"),
            name,
            "pos_embedding",
            "'factorized' or 'learned'",
            self.pos_embedding,
        )
        check(
            self.conditioning in ("class", "per_class"),
            name,
            "conditioning",
            "'class' (one class-conditioned network) or 'per_class' (baseline)",
            self.conditioning,
        )


@dataclasses.dataclass
class TokenizerConfig(Config):
    """Stage 1 (`tumoraug.models.vqgan.VQGAN3D`): architecture and codebook only.

    How it is trained (loss weights, discriminator, codebook restarts) is the
    `tumoraug.training.tokenizer.TokenizerRecipe`. ``importance_hidden`` is the width of the
    grade classifier head behind the importance scores (`tumoraug.models.importance`). The
    encoder halves the ROI once per
    entry of ``channel_mult`` after the first, so the token grid is
    ``roi_size / 2**(len(channel_mult) - 1)`` per axis. Widths of the ``brats128`` (16³
    tokens) and ``paper128`` (8³, the paper's grid) presets and why: see
    ``docs/tokenizer.md``. ``modalities`` names the input channels in order
    (the ROI cache's, e.g. ``("flair", "t1ce", "t2", "t1")``; empty when not recorded, as in
    tokenizers saved before it existed): exports name their files by it (`channel_names`).
    It labels the data without changing the network, so fingerprints and run records leave
    it out (`architecture`).
    """

    in_channels: int = 1
    roi_size: int = 128
    base_channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    num_mid_blocks: int = 2
    attention: bool = True
    norm_groups: int = 8
    embed_dim: int = 16
    codebook_size: int = 1024
    importance_hidden: int = 256
    num_classes: int = 2
    modalities: tuple[str, ...] = ()

    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "brats128": {"importance_hidden": 64},
        # The released tokenizer's shape: 128³ -> 8³ in four halvings, widths 32..256 per
        # resolution, one residual block per level, 1024 codes (docs/tokenizer.md: why the
        # last level stays at 256 and the codes at 32 dimensions).
        "paper128": {
            "channel_mult": (1, 2, 4, 8, 8),
            "num_res_blocks": 1,
            "num_mid_blocks": 1,
            "embed_dim": 32,
            "codebook_size": 1024,
            "importance_hidden": 64,
        },
        "tiny": {
            "roi_size": 16,
            "base_channels": 4,
            "channel_mult": (1, 1, 2),
            "num_res_blocks": 1,
            "num_mid_blocks": 0,
            "attention": False,
            "norm_groups": 4,
            "embed_dim": 4,
            "codebook_size": 64,
            "importance_hidden": 8,
        },
        "small32": {
            "roi_size": 32,
            "base_channels": 16,
            "channel_mult": (1, 2, 2),
            "num_res_blocks": 1,
            "num_mid_blocks": 1,
            "attention": False,
            "norm_groups": 8,
            "embed_dim": 8,
            "codebook_size": 256,
            "importance_hidden": 64,
        },
    }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TokenizerConfig:
        """`Config.from_dict`, also for tokenizers saved while the importance map was a
        choice (``importance``, ``coarse_pool``): ``"classifier"``, the only map now, loads;
        the removed ``"gate"`` is refused with the reason."""
        if isinstance(data, dict) and {"importance", "coarse_pool"} & set(data):
            if data.get("importance", "classifier") != "classifier":
                raise ConfigError(
                    f"TokenizerConfig: importance={data['importance']!r} was removed (the "
                    "decoder gate lost to the paper's importance map, docs/results.md); this "
                    "tokenizer cannot be loaded by this tumoraug: retrain it"
                )
            data = {k: v for k, v in data.items() if k not in ("importance", "coarse_pool")}
        return super().from_dict(data)

    def architecture(self) -> dict[str, Any]:
        """`to_dict` without ``modalities``: what decides the network's computation (naming
        the channels changes no weight, and older tokenizers keep their fingerprints)."""
        return {k: v for k, v in self.to_dict().items() if k != "modalities"}

    @property
    def channel_names(self) -> tuple[str, ...]:
        """The names of the input channels (see `channel_names`)."""
        return channel_names(self.modalities, self.in_channels)

    @property
    def downsample_factor(self) -> int:
        """Voxels per token along each axis."""
        return 2 ** (len(self.channel_mult) - 1)

    @property
    def token_grid(self) -> tuple[int, int, int]:
        """Token grid (d, h, w) of a ``roi_size``³ ROI."""
        side = self.roi_size // self.downsample_factor
        return (side, side, side)

    def validate(self) -> None:
        name = "TokenizerConfig"
        positive = (
            "in_channels", "roi_size", "base_channels", "num_res_blocks", "norm_groups",
            "embed_dim", "importance_hidden", "num_classes",
        )  # fmt: skip
        for field in positive:
            value = getattr(self, field)
            check(isinstance(value, int) and value > 0, name, field, "a positive int", value)
        check(self.codebook_size >= 2, name, "codebook_size", "an int >= 2", self.codebook_size)
        check(
            len(self.channel_mult) >= 1 and all(m > 0 for m in self.channel_mult),
            name, "channel_mult", "a non-empty tuple of positive ints", self.channel_mult,
        )  # fmt: skip
        check(
            self.roi_size % self.downsample_factor == 0,
            name, "roi_size", f"a multiple of downsample_factor = {self.downsample_factor}",
            self.roi_size,
        )  # fmt: skip
        check(
            isinstance(self.num_mid_blocks, int) and self.num_mid_blocks >= 0,
            name, "num_mid_blocks", "an int >= 0", self.num_mid_blocks,
        )  # fmt: skip
        check(self.num_classes >= 2, name, "num_classes", "an int >= 2", self.num_classes)
        check_modalities(name, self.modalities, self.in_channels)


_CHANNEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
"""A channel name: it ends up in file names (``<sample>_<name>.nii.gz``)."""


def check_modalities(owner: str, modalities: Sequence[str], in_channels: int) -> None:
    """`ConfigError` naming ``owner.modalities`` unless it is empty or ``in_channels``
    distinct channel names (letters, digits, '_' and '-')."""
    check(
        not modalities or len(modalities) == in_channels,
        owner, "modalities", f"{in_channels} name(s), one per input channel, or none",
        modalities,
    )  # fmt: skip
    check(
        all(isinstance(m, str) and _CHANNEL_NAME.fullmatch(m) for m in modalities)
        and len(set(modalities)) == len(modalities),
        owner, "modalities", "distinct names of letters, digits, '_' and '-'", modalities,
    )  # fmt: skip


def channel_names(modalities: Sequence[str], count: int) -> tuple[str, ...]:
    """Names of ``count`` image channels: ``modalities`` when recorded; else ``("flair",)``
    for one channel (what ``tumoraug preprocess`` caches by default) and ``ch0, ch1, ...``."""
    if modalities:
        return tuple(modalities)
    return ("flair",) if count == 1 else tuple(f"ch{i}" for i in range(count))
