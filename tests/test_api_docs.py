"""The API reference (docs/api/) covers every public module, and every public name has a
docstring to show there (mkdocstrings hides the names that have none)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from pathlib import Path
from types import ModuleType

import pytest

import tumoraug
from extras import require_extra

API_DOCS = Path(__file__).resolve().parents[1] / "docs" / "api"

# Top-level modules left out of the reference, each with its reason; any other module of
# tumoraug must appear in a `::: module` directive of docs/api/*.md.
NOT_IN_REFERENCE = {
    "tumoraug.cli": "the CLI: `tumoraug --help` and the guide pages document it",
    "tumoraug.cli_options": "the CLI's option parsing",
    "tumoraug.cli_train": "the CLI's training commands",
    "tumoraug.version": "re-exported as `tumoraug.__version__`",
    "tumoraug.device": "internal helper (device strings are documented where they are taken)",
    "tumoraug.progress": "internal helper (the progress bar of training and generation)",
}
# Modules that their package's __init__ does not import (an optional extra).
EXTRA_MODULES = {"tumoraug.augment.monai": "monai"}


def top_level_modules() -> list[str]:
    """``tumoraug`` itself, each subpackage and each top-level module."""
    names = [f"tumoraug.{info.name}" for info in pkgutil.iter_modules(tumoraug.__path__)]
    return [
        "tumoraug",
        *sorted(name for name in names if not name.rsplit(".", 1)[1].startswith("_")),
    ]


def public_modules() -> list[str]:
    """The modules of the reference: the top-level ones less NOT_IN_REFERENCE, the
    submodules of a package without ``__all__`` (its submodules are its surface) and the
    optional-extra modules."""
    out = []
    for name in top_level_modules():
        if name in NOT_IN_REFERENCE:
            continue
        out.append(name)
        module = importlib.import_module(name)
        if hasattr(module, "__path__") and not hasattr(module, "__all__"):
            subs = pkgutil.iter_modules(module.__path__, prefix=f"{name}.")
            out.extend(sorted(info.name for info in subs if not info.ispkg))
    return out + sorted(EXTRA_MODULES)


def load(name: str) -> ModuleType:
    if name in EXTRA_MODULES:
        require_extra(EXTRA_MODULES[name])
    return importlib.import_module(name)


def documented_modules() -> set[str]:
    """Every ``::: module`` directive of docs/api/*.md."""
    found: set[str] = set()
    for page in API_DOCS.glob("*.md"):
        found.update(re.findall(r"^:::\s+([\w.]+)\s*$", page.read_text(), flags=re.MULTILINE))
    return found


def public_names(module: ModuleType) -> list[str]:
    """``__all__``, or else the public classes and functions the module defines."""
    if hasattr(module, "__all__"):
        return list(module.__all__)
    return [
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and (inspect.isclass(value) or inspect.isfunction(value))
        and value.__module__ == module.__name__
    ]


def own_docstring(name: str, value: object) -> str:
    """The docstring written for ``value``: not one that dataclasses / NamedTuple make up
    from the signature (``Name(field: type, ...)``)."""
    if not inspect.isclass(value):
        return (value.__doc__ or "").strip()
    doc = (vars(value).get("__doc__") or "").strip()  # a class's own, not a base's
    return "" if doc.startswith(f"{name}(") else doc


def new_members(cls: type) -> dict[str, object]:
    """Public methods and properties that ``cls`` introduces (overrides take the base's
    documentation: ``forward``, ``validate``, ``apply_transform``)."""
    out = {}
    for name, value in vars(cls).items():
        if name.startswith("_") or any(name in vars(base) for base in cls.__mro__[1:]):
            continue
        func = value.fget if isinstance(value, property) else getattr(value, "__func__", value)
        if inspect.isfunction(func):
            out[name] = func
    return out


def test_public_modules_are_in_the_reference():
    missing = sorted(set(public_modules()) - documented_modules())
    assert not missing, (
        f"public module(s) missing from docs/api/*.md (add a `::: module` line, or list them "
        f"in NOT_IN_REFERENCE with a reason): {missing}"
    )


def test_reference_directives_name_real_modules():
    for name in sorted(documented_modules()):
        if name not in EXTRA_MODULES:
            importlib.import_module(name)


@pytest.mark.parametrize("name", public_modules())
def test_public_names_have_docstrings(name: str):
    module = load(name)
    assert (module.__doc__ or "").strip(), f"{name}: no module docstring"
    undocumented = []
    for attr in public_names(module):
        value = getattr(module, attr)
        if not (inspect.isclass(value) or inspect.isfunction(value)):
            continue
        if not own_docstring(attr, value):
            undocumented.append(attr)
        if inspect.isclass(value):
            undocumented += [
                f"{attr}.{member}"
                for member, func in new_members(value).items()
                if not (func.__doc__ or "").strip()
            ]
    assert not undocumented, f"{name}: public names without a docstring: {undocumented}"
