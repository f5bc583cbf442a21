"""Dataclass configs with JSON round-trip, validation and named presets.

Every model config is a dataclass deriving from `Config`: it converts to and from plain
JSON-compatible dicts (so that it can sit beside the weights as ``config.json``), rejects
unknown fields with a message naming them, and validates its values in ``validate()``.
Presets are registered per config class by name (``"brats128"``, ``"tiny"``).
"""

from __future__ import annotations

import dataclasses
import json
import typing
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
