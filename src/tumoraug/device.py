"""Where tensors run: the one device resolution and the one mixed-precision rule.

``"auto"`` means CUDA when it is available, else the CPU; a plain ``"cuda"`` means the GPU
of this process (``cuda:<LOCAL_RANK>`` under ``torchrun``, ``cuda:0`` otherwise). On CUDA,
networks run under bf16 autocast; on the CPU in float32 unless bf16 is asked for
(``cpu_bf16=True``: the CPU twin of the CUDA path, so that it runs without a GPU).
"""

from __future__ import annotations

import contextlib
import os

import torch

from tumoraug.errors import ConfigError


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; ``"cuda"`` -> ``cuda:<LOCAL_RANK>``."""
    if str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(
            f"unknown device {device!r}: expected auto, cpu or cuda ({exc})"
        ) from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available here")
    if resolved.type == "cuda" and resolved.index is None:
        resolved = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return resolved


def autocast(
    device: torch.device, enabled: bool = True, *, cpu_bf16: bool = False
) -> contextlib.AbstractContextManager:
    """bf16 autocast when ``enabled``: on CUDA, and on the CPU too with ``cpu_bf16``; else a
    no-op context (float32)."""
    if enabled and (device.type == "cuda" or (cpu_bf16 and device.type == "cpu")):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


OPTIONAL_EXTRAS = {"monai": "monai", "baselines": "monai"}
"""Optional extras of tumoraug and the package each one brings."""


def environment_report() -> list[str]:
    """One line each: tumoraug, Python, torch (and whether CUDA is there), TorchIO, and each
    optional extra, installed (with its version) or missing (with the command that adds it)."""
    import importlib.metadata
    import platform

    import torchio

    from tumoraug.version import __version__

    lines = [
        f"tumoraug {__version__}",
        f"python {platform.python_version()}",
        f"torch {torch.__version__} (cuda available: {torch.cuda.is_available()})",
        f"torchio {torchio.__version__}",
    ]
    for extra, package in OPTIONAL_EXTRAS.items():
        try:
            lines.append(f"{package} {importlib.metadata.version(package)} (extra {extra!r})")
        except importlib.metadata.PackageNotFoundError:
            lines.append(f'{package}: not installed (pip install "tumoraug[{extra}]")')
    return lines
