"""The package's shape: no import cycles, layers that point one way, one home per default."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import pkgutil
import re
from pathlib import Path

import tumoraug

SRC = Path(tumoraug.__file__).parent


def module_files() -> dict[str, Path]:
    """Every module of the package by dotted name (packages as their ``__init__``)."""
    found = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def own_imports(name: str, path: Path) -> set[str]:
    """The package modules that ``name`` imports, at module level or inside functions."""
    modules = module_files()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            candidates = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for candidate in candidates:
            while candidate and candidate not in modules:
                candidate = candidate.rpartition(".")[0]
            if candidate and candidate != name:
                targets.add(candidate)
    return targets


def import_graph() -> dict[str, set[str]]:
    return {name: own_imports(name, path) for name, path in module_files().items()}


OPTIONAL = {"tumoraug.augment.monai": "monai"}
"""Modules that need an optional extra, and the package it brings."""


def test_every_module_imports():
    for info in pkgutil.walk_packages(tumoraug.__path__, "tumoraug."):
        extra = OPTIONAL.get(info.name)
        if extra and importlib.util.find_spec(extra) is None and not os.environ.get("CI"):
            continue  # a core install without the extra; CI installs every extra
        importlib.import_module(info.name)


def test_no_import_cycle_inside_the_package():
    graph = import_graph()
    # The package's own __init__ only re-exports the public API: leave it out, or every
    # module that imports a sibling would seem to close a cycle through it.
    graph = {k: {t for t in v if t != "tumoraug"} for k, v in graph.items() if k != "tumoraug"}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph.get(node, ())):
            assert state.get(target) != 1, "import cycle: " + " -> ".join([*path, target])
            if target not in state:
                visit(target, [*path, target])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


def test_layers_point_one_way():
    graph = import_graph()
    for name, targets in graph.items():
        if name.startswith("tumoraug.models"):
            assert not {t for t in targets if t.startswith("tumoraug.training")}, name
        if not name.startswith("tumoraug.cli"):
            assert not {t for t in targets if t.startswith("tumoraug.cli")}, name
        if name.startswith(("tumoraug.data", "tumoraug.models")):
            assert not {t for t in targets if t.startswith("tumoraug.augment")}, name


def test_no_private_name_is_imported_across_modules():
    offenders = []
    for name, path in module_files().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tumoraug"):
                private = [a.name for a in node.names if a.name.startswith("_")]
                private = [p for p in private if p != "__version__"]
                if private:
                    offenders.append(f"{name}: from {node.module} import {', '.join(private)}")
    assert not offenders, offenders


def test_module_sizes():
    sizes = {name: len(path.read_text().splitlines()) for name, path in module_files().items()}
    assert {n: s for n, s in sizes.items() if s > 500} == {}
    assert sizes["tumoraug.cli"] < 250


def defaults_outside(pattern: str, allowed: set[str]) -> list[str]:
    """Lines of modules outside ``allowed`` where ``pattern`` (a default with a literal) occurs."""
    regex = re.compile(pattern)
    hits = []
    for name, path in module_files().items():
        if name in allowed:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if regex.search(line):
                hits.append(f"{name}:{number}: {line.strip()}")
    return hits


def test_sampling_defaults_live_in_one_module():
    literal = r"\s*(:[^=\n]*)?=\s*-?[\d.]+\s*[,)]?\s*$"
    for field in ("guidance_scale", "temperature", "mask_temperature", "top_p", "top_k"):
        assert defaults_outside(rf"\b{field}{literal}", {"tumoraug.sampling"}) == [], field
    assert defaults_outside(r"\bDEFAULT_(STEPS|GUIDANCE)\b", set()) == []


def test_training_options_live_in_train_config():
    literal = r"\s*(:[^=\n]*)?=\s*[\d.]+(e-?\d+)?\s*[,)]?\s*$"
    fields = (
        "max_steps", "grad_accum_steps", "max_grad_norm", "warmup_steps", "checkpoint_every",
        "image_every", "log_every", "keep_checkpoints",
    )  # fmt: skip
    for field in fields:
        assert defaults_outside(rf"\b{field}{literal}", {"tumoraug.training.config"}) == [], field
    assert defaults_outside(r"\*\*opt\b", set()) == []


def test_one_device_resolution_and_one_progress_bar():
    assert defaults_outside(r"def resolve_device\(", {"tumoraug.device"}) == []
    assert defaults_outside(r"rich\.progress", {"tumoraug.progress"}) == []
