"""The paper's comparison systems as generators with tumoraug's interface.

Each baseline is a `tumoraug.generators.FolderGenerator`: it opens from a model folder or
Hub repo, samples with ``generate(labels, seed=...)`` / ``volumes(labels, seeds)``, and goes
wherever a `TumorGenerator` goes (datasets, transforms, banks, ``evaluate``). The diffusion
baselines need MONAI (``pip install "tumoraug[baselines]"``); open any of them with
`tumoraug.open_generator`.
"""

from tumoraug.baselines.alpha_wgan import AlphaWGANGenerator, LatentSampling
from tumoraug.baselines.ddpm import DDPMGenerator, DiffusionSampling
from tumoraug.baselines.latent_diffusion import LatentDiffusionGenerator

__all__ = [
    "AlphaWGANGenerator",
    "DDPMGenerator",
    "DiffusionSampling",
    "LatentDiffusionGenerator",
    "LatentSampling",
]
