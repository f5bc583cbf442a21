"""The token corpus of stage 2: every ROI encoded once into tokens, importance and label.

Stage 2 never runs the tokenizer during training: `encode_corpus` turns every ROI once into
its token grid, importance map and label, stored in one safetensors file that is re-used as
long as the tokenizer weights and the data manifest are unchanged.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import nn
from torch.utils.data import Dataset

from tumoraug.checkpoint import atomic_save_tensors
from tumoraug.data import subject_tensors
from tumoraug.device import autocast, resolve_device
from tumoraug.errors import DataError
from tumoraug.training.checkpoints import data_fingerprint
from tumoraug.version import __version__

CORPUS_NAME = "corpus.safetensors"


@dataclasses.dataclass(eq=False)
class TokenCorpus(Dataset):
    """Token grids, importance maps and labels of a whole dataset; items are
    ``(tokens (d,h,w) long, importance (d,h,w) float, label long)``."""

    tokens: torch.Tensor  # (N, d, h, w) int64
    importance: torch.Tensor  # (N, d, h, w) float32
    labels: torch.Tensor  # (N,) int64
    codebook_size: int
    key: str = ""  # hash of (tokenizer weights, data manifest); "" when unknown

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.tokens[index], self.importance[index], self.labels[index]

    @property
    def token_grid(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.tokens.shape[1:])  # type: ignore[return-value]

    def save(self, path: str | Path) -> Path:
        """Write the corpus as one safetensors file (atomically)."""
        atomic_save_tensors(
            {
                "tokens": self.tokens.to(torch.int32),
                "importance": self.importance.float(),
                "labels": self.labels.to(torch.int64),
            },
            path,
            metadata={
                "key": self.key,
                "codebook_size": str(self.codebook_size),
                "tumoraug_version": __version__,
            },
        )
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> TokenCorpus:
        """Read a corpus written by `save`; errors name the file."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: token corpus file not found")
        try:
            with safe_open(str(path), framework="pt") as handle:
                meta = handle.metadata() or {}
                tensors = {k: handle.get_tensor(k) for k in ("tokens", "importance", "labels")}
            codebook_size = int(meta["codebook_size"])
        except (SafetensorError, OSError, KeyError, ValueError) as exc:
            raise DataError(f"{path}: not a tumoraug token corpus ({exc})") from None
        return cls(
            tokens=tensors["tokens"].long(),
            importance=tensors["importance"].float(),
            labels=tensors["labels"].long(),
            codebook_size=codebook_size,
            key=meta.get("key", ""),
        )


def tokenizer_fingerprint(tokenizer: nn.Module) -> str:
    """SHA-256 of a tokenizer's architecture and parameters (changes whenever either changes).

    Buffers and the channel names are left out: the codebook usage counters change while
    encoding, the names label the data; the mapping from ROIs to tokens changes with neither.
    """
    digest = hashlib.sha256(json.dumps(tokenizer.config.architecture(), sort_keys=True).encode())
    for name, tensor in sorted(tokenizer.named_parameters()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def as_dataset(data: Any) -> Any:
    """A ROI cache folder as an ``ROIDataset``; any other dataset as it is."""
    if isinstance(data, str | Path):
        from tumoraug.data import ROIDataset

        return ROIDataset(data)
    return data


def as_tokenizer(tokenizer: Any) -> Any:
    """A tokenizer folder loaded as a `VQGAN3D`; a live tokenizer as it is."""
    if isinstance(tokenizer, str | Path):
        from tumoraug.models.vqgan import VQGAN3D

        return VQGAN3D.from_pretrained(tokenizer)
    return tokenizer


@torch.no_grad()
def encode_corpus(
    tokenizer: Any,
    data: Any,
    path: str | Path | None = None,
    *,
    batch_size: int = 8,
    device: str | torch.device = "auto",
    cpu_bf16: bool = False,
) -> TokenCorpus:
    """Encode every ROI of ``data`` once into tokens + importance + labels.

    ``tokenizer``: a `VQGAN3D` or its folder; ``data``: an ``ROIDataset``, a cache folder or
    any dataset whose items `tumoraug.data.subject_tensors` reads. With ``path`` the corpus is
    written there, and an existing file is re-used (without running the tokenizer) when its
    key, a hash of the tokenizer weights and the data (`data_fingerprint`: the cache's
    subjects, labels, shapes and file hashes), still matches; datasets without a
    ``manifest`` are always re-encoded. The tokenizer runs under bf16 autocast on CUDA, and on
    the CPU too with ``cpu_bf16``.
    """
    tokenizer, data = as_tokenizer(tokenizer), as_dataset(data)
    data_key = data_fingerprint(data)
    key = ""
    if data_key is not None:
        key = hashlib.sha256((tokenizer_fingerprint(tokenizer) + data_key).encode()).hexdigest()
    if path is not None and key and Path(path).is_file():
        try:
            cached = TokenCorpus.load(path)
        except DataError:
            cached = None
        if cached is not None and cached.key == key:
            return cached
    if len(data) == 0:
        raise DataError("encode_corpus: the dataset is empty")
    device = resolve_device(device)
    was_training = tokenizer.training
    tokenizer.to(device).eval()
    tokens, importance, labels = [], [], []
    try:
        for start in range(0, len(data), batch_size):
            items = [
                subject_tensors(data[i]) for i in range(start, min(start + batch_size, len(data)))
            ]
            images = torch.cat([item[0] for item in items]).to(device)
            with autocast(device, cpu_bf16=cpu_bf16):
                grid, score = tokenizer.encode(images)
            tokens.append(grid.long().cpu())
            importance.append(score.float().cpu())
            labels.append(torch.cat([item[2] for item in items]).long())
    finally:
        tokenizer.train(was_training)
    corpus = TokenCorpus(
        torch.cat(tokens),
        torch.cat(importance),
        torch.cat(labels),
        int(tokenizer.config.codebook_size),
        key,
    )
    if path is not None:
        corpus.save(path)
    return corpus
