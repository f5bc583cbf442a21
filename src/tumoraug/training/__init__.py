"""Training: the shared engine (`loop.fit` with a `TrainConfig`) and one module per stage.

``tokenizer`` trains stage 1 with its `TokenizerRecipe`; ``transformer`` trains stage 2 on
the token corpus (``corpus``) with its `TransformerRecipe` and ``masking``.
"""

from tumoraug.training.config import TrainConfig
from tumoraug.training.loop import fit
from tumoraug.training.tokenizer import TokenizerRecipe, train_tokenizer
from tumoraug.training.transformer import TransformerRecipe, train_transformer

__all__ = [
    "TokenizerRecipe",
    "TrainConfig",
    "TransformerRecipe",
    "fit",
    "train_tokenizer",
    "train_transformer",
]
