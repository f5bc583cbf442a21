"""Training of the stage-2 `MaskedTransformer` on pre-computed token grids.

Stage 2 never runs the tokenizer during training: `encode_corpus` turns every ROI once into
its token grid, importance map and label, stored in one safetensors file that is re-used as
long as the tokenizer weights and the data manifest are unchanged. `train_generator` then
wraps the transformer in a `GeneratorTask` and hands it to the shared engine
`tumoraug.training.loop.fit` (devices, bf16 on CUDA, accumulation, checkpoints, exact resume,
DDP, progress, ``metrics.jsonl``).

The loss of one batch: the token grids are corrupted with `tumoraug.masking.corrupt`
(hybrid importance masking, or plain MaskGIT masking), the class of each sample is replaced
by the null class with probability ``class_dropout`` (so that one network also learns the
unconditional model used by classifier-free guidance), and the loss is the cross-entropy
between the predicted and the original tokens at every corrupted position.

When the tokenizer is known, the output folder is also a complete `TumorGenerator` model
(``tumoraug.json`` + ``tokenizer/`` + ``generator/``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from torch import nn
from torch.utils.data import Dataset

from tumoraug import __version__
from tumoraug.checkpoint import atomic_save_tensors
from tumoraug.config import TransformerConfig
from tumoraug.errors import ConfigError, DataError
from tumoraug.masking import corrupt
from tumoraug.models.transformer import MaskedTransformer, PerClassTransformer, build_transformer
from tumoraug.training.loop import FitResult, StepContext, StepOutput, TrainingTask, fit

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
    """SHA-256 of a tokenizer's config and parameters (changes whenever either changes).

    Buffers are left out: the codebook usage counters change while encoding, the mapping
    from ROIs to tokens does not.
    """
    digest = hashlib.sha256(json.dumps(tokenizer.config.to_dict(), sort_keys=True).encode())
    for name, tensor in sorted(tokenizer.named_parameters()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _data_fingerprint(data: Any) -> str | None:
    manifest = getattr(data, "manifest", None)
    if manifest is None:
        return None
    return hashlib.sha256(json.dumps(manifest, sort_keys=True, default=str).encode()).hexdigest()


def _as_dataset(data: Any) -> Any:
    if isinstance(data, str | Path):
        from tumoraug.data import ROIDataset

        return ROIDataset(data)
    return data


def _as_tokenizer(tokenizer: Any) -> Any:
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
) -> TokenCorpus:
    """Encode every ROI of ``data`` once into tokens + importance + labels.

    ``tokenizer``: a `VQGAN3D` or its folder; ``data``: an ``ROIDataset``, a cache folder or
    any dataset whose items `tumoraug.data.subject_tensors` reads. With ``path`` the corpus is
    written there, and an existing file is re-used (without running the tokenizer) when its
    key, a hash of the tokenizer weights and the data manifest, still matches; datasets
    without a ``manifest`` are always re-encoded.
    """
    from tumoraug.data import subject_tensors
    from tumoraug.training.loop import resolve_device

    tokenizer, data = _as_tokenizer(tokenizer), _as_dataset(data)
    data_key = _data_fingerprint(data)
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
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
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


def _generator(ctx: StepContext, salt: int) -> torch.Generator:
    """A CPU generator for (seed, step, micro-step, rank, salt): distinct and resume-safe."""
    entropy = [ctx.seed & 0xFFFFFFFF, ctx.step, ctx.micro_step, ctx.rank, salt]
    return torch.Generator().manual_seed(int(np.random.SeedSequence(entropy).generate_state(1)[0]))


class GeneratorTask(TrainingTask):
    """The stage-2 objective (see the module docstring) as a `TrainingTask`."""

    def __init__(
        self,
        model: MaskedTransformer | PerClassTransformer,
        *,
        lr: float = 3e-4,
        weight_decay: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.95),
        tokenizer: nn.Module | None = None,
    ) -> None:
        self.model = model
        self.config: TransformerConfig = model.config
        self.lr, self.weight_decay, self.betas = lr, weight_decay, betas
        self.tokenizer = tokenizer

    def modules(self) -> dict[str, nn.Module]:
        return {"generator": self.model}

    def configure_optimizers(self, modules: dict[str, nn.Module]) -> dict[str, Any]:
        decay, no_decay = [], []
        for name, param in self.model.named_parameters():
            (decay if param.ndim >= 2 and "embedding" not in name else no_decay).append(param)
        groups = [
            {"params": decay, "weight_decay": self.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        return {"generator": torch.optim.AdamW(groups, lr=self.lr, betas=self.betas)}

    def training_step(self, batch: Any, ctx: StepContext) -> StepOutput:
        c = self.config
        tokens, importance, labels = batch
        g = _generator(ctx, 0)
        corrupted, target_mask = corrupt(
            tokens,
            importance,
            g,
            mode=c.masking,
            mask_id=c.mask_id,
            codebook_size=c.codebook_size,
            topk_ratio=c.topk_ratio,
            neighbor_radius=c.neighbor_radius,
            random_replace_ratio=c.random_replace_ratio,
            random_mask_prob=c.random_mask,
        )
        drop = (torch.rand(labels.shape[0], generator=g) < c.class_dropout).to(labels.device)
        labels = labels.masked_fill(drop, c.null_class)
        devices = [tokens.device] if tokens.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices, device_type=tokens.device.type):
            torch.manual_seed(int(torch.randint(2**62, (1,), generator=g)))  # dropout noise
            logits = ctx.modules["generator"](corrupted, labels)
        chosen = logits[target_mask].float()
        target = tokens[target_mask]
        loss = F.cross_entropy(chosen, target)
        with torch.no_grad():
            accuracy = (chosen.argmax(-1) == target).float().mean()
        metrics = {"accuracy": accuracy, "corrupted_fraction": target_mask.float().mean()}
        return StepOutput({"generator": loss}, metrics)

    def save_images(self, batch: Any, ctx: StepContext, path: Path) -> None:
        if self.tokenizer is None:
            return
        from tumoraug.sampling import SamplingConfig, make_rngs, sample_tokens
        from tumoraug.viz import save_montage

        was_training = self.model.training
        self.model.eval()
        try:
            labels = torch.tensor([1, 1, 0, 0])
            tokens = sample_tokens(
                self.model, labels, make_rngs(range(4)), SamplingConfig(steps=8)
            )
            self.tokenizer.to(tokens.device).eval()
            volumes = self.tokenizer.decode(tokens).float()
        finally:
            self.model.train(was_training)
        save_montage(volumes, path, row_labels=["HGG", "HGG", "LGG", "LGG"])


def _resolve_corpus(
    source: Any, output_dir: Path, batch_size: int, device: Any
) -> tuple[TokenCorpus, Any]:
    """Accept a corpus, a corpus file, or ``(tokenizer, data)``; return (corpus, tokenizer)."""
    if isinstance(source, TokenCorpus):
        return source, None
    if isinstance(source, str | Path):
        return TokenCorpus.load(source), None
    if isinstance(source, tuple | list) and len(source) == 2:
        tokenizer = _as_tokenizer(source[0])
        corpus = encode_corpus(
            tokenizer, source[1], output_dir / CORPUS_NAME, batch_size=batch_size, device=device
        )
        return corpus, tokenizer
    raise ConfigError(
        "train_generator: expected a TokenCorpus, a corpus file, or a (tokenizer, data) pair, "
        f"got {type(source).__name__}"
    )


def train_generator(
    config: TransformerConfig | str,
    data: Any,
    output_dir: str | Path,
    *,
    tokenizer: Any = None,
    max_steps: int = 1000,
    batch_size: int = 8,
    lr: float = 3e-4,
    weight_decay: float = 0.01,
    device: str | torch.device = "auto",
    seed: int = 0,
    resume: bool = True,
    grad_accum_steps: int = 1,
    mixed_precision: bool = True,
    checkpoint_every: int = 500,
    log_every: int = 10,
    image_every: int = 0,
    num_workers: int = 0,
    max_grad_norm: float | None = 1.0,
    warmup_steps: int = 0,
    progress: bool = True,
) -> FitResult:
    """Train the stage-2 model; it goes to ``output_dir/generator``.

    The model is a `MaskedTransformer`, or the per-class baseline (`PerClassTransformer`)
    when ``config.conditioning == "per_class"`` (see `TransformerConfig.baseline`).

    ``config``: a `TransformerConfig` or a preset name; its ``codebook_size`` and
    ``token_grid`` are replaced by those of the corpus. ``data``: a `TokenCorpus`, a corpus
    file, or a ``(tokenizer, roi_data)`` pair (tokenizer a `VQGAN3D` or its folder; the
    corpus is then encoded once into ``output_dir/corpus.safetensors``). When the tokenizer
    is known (from the pair or the ``tokenizer`` argument), ``output_dir`` also becomes a
    complete `TumorGenerator` folder. The other options are those of
    `tumoraug.training.loop.fit`.
    """
    if isinstance(config, str):
        config = TransformerConfig.preset(config)
    output_dir = Path(output_dir)
    corpus, pair_tokenizer = _resolve_corpus(data, output_dir, batch_size, device)
    tokenizer = _as_tokenizer(tokenizer) if tokenizer is not None else pair_tokenizer
    if tokenizer is not None and tokenizer.config.codebook_size != corpus.codebook_size:
        raise ConfigError(
            f"train_generator: tokenizer codebook_size {tokenizer.config.codebook_size} does "
            f"not match the corpus ({corpus.codebook_size})"
        )
    config = config.replace(codebook_size=corpus.codebook_size, token_grid=corpus.token_grid)
    torch.manual_seed(seed)
    task = GeneratorTask(
        build_transformer(config), lr=lr, weight_decay=weight_decay, tokenizer=tokenizer
    )
    result = fit(
        task,
        corpus,
        output_dir,
        max_steps=max_steps,
        batch_size=batch_size,
        seed=seed,
        device=device,
        grad_accum_steps=grad_accum_steps,
        max_grad_norm=max_grad_norm,
        warmup_steps=warmup_steps,
        mixed_precision=mixed_precision,
        checkpoint_every=checkpoint_every,
        log_every=log_every,
        image_every=image_every,
        resume=resume,
        num_workers=num_workers,
        progress=progress,
    )
    if tokenizer is not None and int(os.environ.get("RANK", "0")) == 0:
        from tumoraug.generator import TumorGenerator

        TumorGenerator(tokenizer, task.model, device="cpu").save_pretrained(output_dir)
    return result
