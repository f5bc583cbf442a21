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

`TumorGenerator` is a `tumoraug.generators.FolderGenerator`: opening, lazy loading, pickling,
`volumes` / `generate` and saving are shared with the baselines of `tumoraug.baselines`.

Both stages run under bf16 autocast on CUDA and in float32 on the CPU; ``cpu_bf16=True``
runs them under bf16 autocast on the CPU too (the CPU twin of the CUDA path). Volumes come
out float32 either way.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tumoraug.config import Config, TokenizerConfig, TransformerConfig
from tumoraug.device import autocast
from tumoraug.errors import CheckpointError
from tumoraug.generators import MANIFEST_NAME, FolderGenerator
from tumoraug.sampling import SamplingConfig, check_sampling, make_rngs, sample_tokens
from tumoraug.version import __version__

MODEL_TYPE = "tumor_generator"
FORMAT_VERSION = 2
"""Model-folder format: 2 keeps stage 2 in ``transformer/`` (format 1 had ``generator/``)."""
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


class TumorGenerator(FolderGenerator):
    """Class-conditional synthetic tumor ROIs from a tokenizer and a masked transformer.

    Build it with `from_pretrained` (lazy) or from live models
    ``TumorGenerator(tokenizer, transformer, device="auto")``; ``cpu_bf16=True`` samples and
    decodes under bf16 autocast on the CPU too (CUDA always uses it). Its sampling settings
    are a `SamplingConfig`.
    """

    model_type = MODEL_TYPE
    format_version = FORMAT_VERSION
    sampling_class = SamplingConfig

    def __init__(
        self,
        tokenizer: Any,
        transformer: Any,
        *,
        device: str | torch.device = "auto",
        cpu_bf16: bool = False,
    ):
        super().__init__(
            {TOKENIZER_DIR: tokenizer, TRANSFORMER_DIR: transformer},
            device=device,
            cpu_bf16=cpu_bf16,
        )

    @classmethod
    def _check_manifest(cls, root: Path, manifest: dict[str, Any]) -> None:
        version = manifest.get("format_version")
        if (
            manifest.get("model_type") == MODEL_TYPE
            and isinstance(version, int)
            and (not isinstance(version, bool) and 1 <= version < FORMAT_VERSION)
        ):
            raise CheckpointError(
                f"{root / MANIFEST_NAME}: format version {version} was written by an older "
                f"tumoraug (stage 2 in generator/) and must be re-saved in format "
                f"{FORMAT_VERSION} (stage 2 in {TRANSFORMER_DIR}/) before this tumoraug "
                f"({__version__}) can open it"
            )
        super()._check_manifest(root, manifest)

    @classmethod
    def _read_configs(cls, root: Path) -> dict[str, Config]:
        from tumoraug.models.transformer import MaskedTransformer
        from tumoraug.models.vqgan import VQGAN3D

        return {
            TOKENIZER_DIR: VQGAN3D.load_config(root / TOKENIZER_DIR),
            TRANSFORMER_DIR: MaskedTransformer.load_config(root / TRANSFORMER_DIR),
        }

    @classmethod
    def _check_configs(cls, configs: dict[str, Any], source: str) -> None:
        check_compatible(configs[TOKENIZER_DIR], configs[TRANSFORMER_DIR], source)

    def _load_models(self, root: Path) -> dict[str, nn.Module]:
        from tumoraug.models.transformer import transformer_class
        from tumoraug.models.vqgan import VQGAN3D

        return {
            TOKENIZER_DIR: VQGAN3D.from_pretrained(root / TOKENIZER_DIR, device=self._device),
            TRANSFORMER_DIR: transformer_class(self.transformer_config).from_pretrained(
                root / TRANSFORMER_DIR, device=self._device
            ),
        }

    def _shape(self) -> TokenizerConfig:
        return self.tokenizer_config

    def _manifest_extra(self) -> dict[str, Any]:
        return {
            "token_grid": list(self.transformer_config.token_grid),
            "codebook_size": self.transformer_config.codebook_size,
        }

    # -- the two stages --------------------------------------------------------------------

    @property
    def modalities(self) -> tuple[str, ...]:
        """Names of the C channels, e.g. ``("flair", "t1ce", "t2", "t1")``: the tokenizer's
        `TokenizerConfig.channel_names` (``("flair",)`` for older single-channel models)."""
        return self.tokenizer_config.channel_names

    @property
    def tokenizer_config(self) -> TokenizerConfig:
        """Architecture of stage 1 (read from the folder without loading weights)."""
        return self._configs[TOKENIZER_DIR]

    @property
    def transformer_config(self) -> TransformerConfig:
        """Architecture of stage 2 (read from the folder without loading weights)."""
        return self._configs[TRANSFORMER_DIR]

    @property
    def tokenizer(self) -> Any:
        """The stage-1 `VQGAN3D` (loads the weights if needed)."""
        return self.models[TOKENIZER_DIR]

    @property
    def transformer(self) -> Any:
        """The stage-2 `MaskedTransformer` (loads the weights if needed)."""
        return self.models[TRANSFORMER_DIR]

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
        return self._finish(self._decode(tokens))

    @torch.no_grad()
    def _decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Grids known to be valid (the sampler's) -> raw volumes: no per-grid id check."""
        tokenizer = self.tokenizer
        tokens = tokens.to(self._device)
        with autocast(self._device, cpu_bf16=self._cpu_bf16):
            volumes = [
                tokenizer.decode(grid[None], check_ids=False).float().cpu()  # (1, C, S, S, S)
                for grid in tokens
            ]
        return torch.cat([self._no_volumes(), *volumes])

    def _sample(self, labels: list[int], seeds: list[int], sampling: Any) -> torch.Tensor:
        return self._decode(self.generate_tokens(labels, seeds, sampling))
