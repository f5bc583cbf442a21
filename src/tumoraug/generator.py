"""`TumorGenerator`: the two-stage pipeline that turns (grade, seed) pairs into tumor ROIs.

A full model is one folder (local or a Hub repo)::

    tumoraug.json                      what the folder is, ROI size, channels (modalities),
                                       grades
    tokenizer/config.json              stage 1, `tumoraug.models.vqgan.VQGAN3D`
    tokenizer/model.safetensors
    transformer/config.json            stage 2, `tumoraug.models.transformer.MaskedTransformer`
    transformer/model.safetensors

`TumorGenerator.from_pretrained` reads only the JSON files, so it is cheap, checks that the
two stages fit together, and is picklable: DataLoader workers receive the folder path and
load the weights themselves, once, on their first call.

`TumorGenerator.volumes` is the one code path from per-sample labels and seeds to volumes;
`generate`, the datasets, transforms, banks and exports all go through it. Sample ``j``
depends only on its label, its seed and the `SamplingConfig`, never on the batch it is drawn
in: tokens are drawn from one `torch.Generator` per sample (see `tumoraug.sampling`) and
every token grid is decoded on its own, because a batched 3D convolution differs in the last
float bits with the batch size.

Both stages run under bf16 autocast on CUDA and in float32 on the CPU; ``cpu_bf16=True``
runs them under bf16 autocast on the CPU too (the CPU twin of the CUDA path). Volumes come
out float32 either way.
"""

from __future__ import annotations

import json
import numbers
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from tumoraug.checkpoint import atomic_write_json, resolve_pretrained
from tumoraug.config import TokenizerConfig, TransformerConfig
from tumoraug.device import autocast, resolve_device
from tumoraug.errors import CheckpointError, ConfigError
from tumoraug.labels import GRADES, LabelLike, to_labels
from tumoraug.progress import progress_bar
from tumoraug.sampling import (
    SamplingConfig,
    check_sampling,
    make_rngs,
    per_sample_seeds,
    sample_tokens,
)
from tumoraug.version import __version__

MODEL_TYPE = "tumor_generator"
FORMAT_VERSION = 2
"""Model-folder format: 2 keeps stage 2 in ``transformer/`` (format 1 had ``generator/``)."""
MANIFEST_NAME = "tumoraug.json"
TOKENIZER_DIR = "tokenizer"
TRANSFORMER_DIR = "transformer"


def check_compatible(
    tokenizer: TokenizerConfig, transformer: TransformerConfig, source: str
) -> None:
    """Raise `CheckpointError` unless the transformer's vocabulary and grid match the tokenizer."""
    if tokenizer.codebook_size != transformer.codebook_size:
        raise CheckpointError(
            f"{source}: transformer codebook_size {transformer.codebook_size} does not match "
            f"the tokenizer's {tokenizer.codebook_size}"
        )
    if tuple(tokenizer.token_grid) != tuple(transformer.token_grid):
        raise CheckpointError(
            f"{source}: transformer token_grid {tuple(transformer.token_grid)} does not match "
            f"the tokenizer's {tuple(tokenizer.token_grid)}"
        )


def _read_manifest(root: Path) -> dict[str, Any]:
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise CheckpointError(
            f"{path}: missing; a tumoraug model folder holds {MANIFEST_NAME}, "
            f"{TOKENIZER_DIR}/ and {TRANSFORMER_DIR}/"
        )
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("model_type") != MODEL_TYPE:
        raise CheckpointError(f"{path}: not a tumoraug model (model_type != {MODEL_TYPE!r})")
    version = manifest.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CheckpointError(f"{path}: format_version {version!r} is not a model-folder format")
    if version < FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: format version {version} was written by an older tumoraug (stage 2 in "
            f"generator/) and must be re-saved in format {FORMAT_VERSION} (stage 2 in "
            f"{TRANSFORMER_DIR}/) before this tumoraug ({__version__}) can open it"
        )
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: format version {version} is newer than this tumoraug ({__version__}) "
            f"supports ({FORMAT_VERSION}); upgrade tumoraug"
        )
    return manifest


class TumorGenerator:
    """Class-conditional synthetic tumor ROIs from a tokenizer and a masked transformer.

    Build it with `from_pretrained` (lazy) or from live models
    ``TumorGenerator(tokenizer, transformer, device="auto")``; ``cpu_bf16=True`` samples and
    decodes under bf16 autocast on the CPU too (CUDA always uses it).
    """

    def __init__(
        self,
        tokenizer: Any,
        transformer: Any,
        *,
        device: str | torch.device = "auto",
        cpu_bf16: bool = False,
    ):
        check_compatible(tokenizer.config, transformer.config, "TumorGenerator")
        self._device_request = str(device)
        self._device = resolve_device(device)
        self._cpu_bf16 = bool(cpu_bf16)
        self._root: Path | None = None
        self._source: str | None = None
        self._tokenizer_config: TokenizerConfig = tokenizer.config
        self._transformer_config: TransformerConfig = transformer.config
        self._tokenizer = tokenizer.to(self._device).eval()
        self._transformer = transformer.to(self._device).eval()
        self._lock = threading.Lock()

    @classmethod
    def from_pretrained(
        cls,
        path_or_hub_id: str | Path,
        *,
        device: str | torch.device = "auto",
        revision: str | None = None,
        cpu_bf16: bool = False,
    ) -> TumorGenerator:
        """Open a model folder or Hub repo; reads only its JSON files (weights on first use)."""
        from tumoraug.models.transformer import MaskedTransformer
        from tumoraug.models.vqgan import VQGAN3D

        root = resolve_pretrained(path_or_hub_id, revision=revision)
        _read_manifest(root)
        tokenizer_config = VQGAN3D.load_config(root / TOKENIZER_DIR)
        transformer_config = MaskedTransformer.load_config(root / TRANSFORMER_DIR)
        check_compatible(tokenizer_config, transformer_config, str(root))  # type: ignore[arg-type]
        generator = cls.__new__(cls)
        generator.__setstate__(
            {
                "device_request": str(device),
                "cpu_bf16": bool(cpu_bf16),
                "root": root,
                "source": str(path_or_hub_id),
                "tokenizer_config": tokenizer_config,
                "transformer_config": transformer_config,
            }
        )
        return generator

    # -- state ---------------------------------------------------------------------------

    @property
    def is_loaded(self) -> bool:
        """Whether the weights of both stages are in memory."""
        return self._tokenizer is not None and self._transformer is not None

    @property
    def roi_size(self) -> int:
        """Edge length S of the generated ``(C, S, S, S)`` ROIs."""
        return int(self._tokenizer_config.roi_size)

    @property
    def in_channels(self) -> int:
        """Number of channels C of the generated ROIs."""
        return int(self._tokenizer_config.in_channels)

    @property
    def modalities(self) -> tuple[str, ...]:
        """Names of the C channels, e.g. ``("flair", "t1ce", "t2", "t1")``: the tokenizer's
        `TokenizerConfig.channel_names` (``("flair",)`` for older single-channel models)."""
        return self._tokenizer_config.channel_names

    @property
    def device(self) -> torch.device:
        """Device the models run on."""
        return self._device

    @property
    def cpu_bf16(self) -> bool:
        """Whether sampling and decoding run under bf16 autocast on the CPU too."""
        return self._cpu_bf16

    @property
    def source(self) -> str | None:
        """The folder or Hub id this generator was opened from (None for live models)."""
        return self._source

    @property
    def tokenizer_config(self) -> TokenizerConfig:
        """Architecture of stage 1 (read from the folder without loading weights)."""
        return self._tokenizer_config

    @property
    def transformer_config(self) -> TransformerConfig:
        """Architecture of stage 2 (read from the folder without loading weights)."""
        return self._transformer_config

    @property
    def tokenizer(self) -> Any:
        """The stage-1 `VQGAN3D` (loads the weights if needed)."""
        self.load()
        return self._tokenizer

    @property
    def transformer(self) -> Any:
        """The stage-2 `MaskedTransformer` (loads the weights if needed)."""
        self.load()
        return self._transformer

    def load(self) -> TumorGenerator:
        """Load both stages' weights onto the device (once; thread-safe); returns self."""
        if self.is_loaded:
            return self
        from tumoraug.models.transformer import transformer_class
        from tumoraug.models.vqgan import VQGAN3D

        with self._lock:
            if not self.is_loaded:
                assert self._root is not None
                tokenizer = VQGAN3D.from_pretrained(self._root / TOKENIZER_DIR, device=self._device)
                transformer = transformer_class(self._transformer_config).from_pretrained(
                    self._root / TRANSFORMER_DIR, device=self._device
                )
                self._tokenizer, self._transformer = tokenizer, transformer
        return self

    def __getstate__(self) -> dict[str, Any]:
        state = {
            "device_request": self._device_request,
            "cpu_bf16": self._cpu_bf16,
            "root": self._root,
            "source": self._source,
            "tokenizer_config": self._tokenizer_config,
            "transformer_config": self._transformer_config,
        }
        if self._root is None:  # live models have no folder to reload from
            state["tokenizer"], state["transformer"] = self._tokenizer, self._transformer
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._device_request = state["device_request"]
        self._device = resolve_device(self._device_request)
        self._cpu_bf16 = state["cpu_bf16"]
        self._root = state["root"]
        self._source = state["source"]
        self._tokenizer_config = state["tokenizer_config"]
        self._transformer_config = state["transformer_config"]
        self._tokenizer = state.get("tokenizer")
        self._transformer = state.get("transformer")
        if self._tokenizer is not None:
            self._tokenizer = self._tokenizer.to(self._device).eval()
            self._transformer = self._transformer.to(self._device).eval()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        origin = self._source or "live models"
        return (
            f"TumorGenerator({origin!r}, roi_size={self.roi_size}, in_channels={self.in_channels}, "
            f"device={str(self._device)!r}, loaded={self.is_loaded})"
        )

    # -- sampling ------------------------------------------------------------------------

    def _no_volumes(self) -> torch.Tensor:
        size = self.roi_size
        return torch.zeros(0, self.in_channels, size, size, size)

    @torch.no_grad()
    def generate_tokens(
        self,
        labels: Sequence[int],
        seeds: Sequence[int],
        sampling: SamplingConfig | None = None,
    ) -> torch.Tensor:
        """Token grids ``(N, d, h, w)`` for integer ``labels``, one seed per sample."""
        transformer = self.transformer
        with autocast(self._device, cpu_bf16=self._cpu_bf16):
            return sample_tokens(
                transformer,
                torch.as_tensor(list(labels), dtype=torch.long),
                make_rngs(seeds),
                check_sampling(sampling),
            )

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token grids ``(N, d, h, w)`` -> ROIs ``(N, C, S, S, S)`` float32 on the CPU in [-1, 1].

        Batch-invariant: each grid is decoded on its own, so a volume does not depend on the
        other grids passed with it. Ids outside the codebook are a `DataError`. A decoded NaN
        or infinity is a `CheckpointError` (the weights are broken), checked before clamping,
        which would turn infinities into ±1.
        """
        self.tokenizer.quantizer.check_tokens(tokens)  # once per batch
        return self._decode(tokens)

    @torch.no_grad()
    def _decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """`decode` of grids known to be valid (the sampler's): no per-grid check of the ids."""
        tokenizer = self.tokenizer
        tokens = tokens.to(self._device)
        with autocast(self._device, cpu_bf16=self._cpu_bf16):
            volumes = [
                tokenizer.decode(grid[None], check_ids=False).float().cpu()  # (1, C, S, S, S)
                for grid in tokens
            ]
        out = torch.cat([self._no_volumes(), *volumes])
        if not bool(torch.isfinite(out).all()):
            bad = [j for j, volume in enumerate(out) if not bool(torch.isfinite(volume).all())]
            raise CheckpointError(
                f"{self._source or 'TumorGenerator'}: the model decoded non-finite values "
                f"(NaN or infinity) for {len(bad)} of {len(out)} sample(s) of this batch; its "
                "weights are broken: re-train or re-download the model"
            )
        return out.clamp(-1.0, 1.0)

    def volumes(
        self,
        labels: Sequence[LabelLike],
        seeds: Sequence[int],
        *,
        sampling: SamplingConfig | None = None,
        batch_size: int = 8,
        progress: bool = False,
    ) -> torch.Tensor:
        """ROIs ``(N, C, S, S, S)`` float32 on the CPU for per-sample ``labels`` and ``seeds``.

        The one path from (label, seed) to a volume: tokens are sampled ``batch_size`` samples
        at a time, then decoded one by one, so that the result does not depend on
        ``batch_size``; a model that decodes NaN or infinity is refused (`CheckpointError`).
        ``progress`` shows a progress bar on stderr.
        """
        label_list = to_labels(list(labels))
        seed_list = [int(s) for s in seeds]
        if len(seed_list) != len(label_list):
            raise ConfigError(
                f"got {len(seed_list)} seeds for {len(label_list)} samples: one seed per sample"
            )
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        sampling = check_sampling(sampling)
        outputs = [self._no_volumes()]
        with progress_bar("generating", len(label_list), enabled=progress) as bar:
            for lo in range(0, len(label_list), batch_size):
                part = slice(lo, lo + batch_size)
                tokens = self.generate_tokens(label_list[part], seed_list[part], sampling)
                outputs.append(self._decode(tokens))
                bar.advance(len(tokens))
        return torch.cat(outputs)

    def generate(
        self,
        labels: LabelLike | Iterable[LabelLike],
        n: int | None = None,
        *,
        seed: int | Sequence[int] = 0,
        sampling: SamplingConfig | None = None,
        batch_size: int = 8,
        progress: bool = False,
    ) -> torch.Tensor:
        """Sample ROIs ``(N, C, S, S, S)`` float32 on the CPU in [-1, 1].

        ``labels``: ``"HGG"``, ``"LGG"``, 0, 1, or a list of them (mixed grades are fine);
        ``n`` repeats a single label ``n`` times. ``seed``: an int, standing for the
        per-sample seeds ``per_sample_seeds(seed, N)``, or one int per sample.
        ``sampling``: the decoding settings (`SamplingConfig` defaults when None).
        """
        label_list = to_labels(labels, n)
        if isinstance(seed, numbers.Integral):
            seeds = per_sample_seeds(int(seed), len(label_list))
        else:
            seeds = [int(s) for s in seed]
        return self.volumes(
            label_list, seeds, sampling=sampling, batch_size=batch_size, progress=progress
        )

    # -- saving --------------------------------------------------------------------------

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write both stages into one Hub-compatible folder; `tumoraug.json` is written last.

        A model card (README.md) is not part of the folder format: write one with
        `tumoraug.export.model_card` when publishing.
        """
        directory = Path(directory)
        self.load()
        self._tokenizer.save_pretrained(directory / TOKENIZER_DIR)
        self._transformer.save_pretrained(directory / TRANSFORMER_DIR)
        atomic_write_json(
            directory / MANIFEST_NAME,
            {
                "model_type": MODEL_TYPE,
                "format_version": FORMAT_VERSION,
                "tumoraug_version": __version__,
                "roi_size": self.roi_size,
                "in_channels": self.in_channels,
                "modalities": list(self.modalities),
                "grades": list(GRADES),
                "token_grid": list(self._transformer_config.token_grid),
                "codebook_size": self._transformer_config.codebook_size,
            },
        )
        return directory
