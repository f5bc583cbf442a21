"""Architecture presets: the two stages agree, and ``paper128`` has the paper's 8³ grid."""

from __future__ import annotations

import pytest
import torch

from tumoraug import SamplingConfig, TumorGenerator
from tumoraug.config import TokenizerConfig, TransformerConfig
from tumoraug.models.transformer import MaskedTransformer
from tumoraug.models.vqgan import VQGAN3D


def parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(
    "name", sorted(set(TokenizerConfig.presets) & set(TransformerConfig.presets))
)
def test_presets_of_both_stages_fit_together(name):
    tokenizer, transformer = TokenizerConfig.preset(name), TransformerConfig.preset(name)
    assert transformer.codebook_size == tokenizer.codebook_size
    assert transformer.token_grid == tokenizer.token_grid
    assert TokenizerConfig.from_dict(tokenizer.to_dict()) == tokenizer
    assert TransformerConfig.from_dict(transformer.to_dict()) == transformer


def test_paper128_is_the_papers_grid_and_codebook():
    config = TokenizerConfig.preset("paper128")
    assert config.roi_size == 128 and config.downsample_factor == 16
    assert config.token_grid == (8, 8, 8) and config.codebook_size == 1024
    widths = [config.base_channels * m for m in config.channel_mult]
    assert widths == [32, 64, 128, 256, 256]  # at 128³, 64³, 32³, 16³, 8³
    assert TransformerConfig.preset("paper128").num_tokens == 512


def test_paper128_shapes_at_128_on_meta_device():
    """The full-size architecture without computing anything (meta tensors carry shapes)."""
    config = TokenizerConfig.preset("paper128")
    with torch.device("meta"):
        model = VQGAN3D(config)
        x = torch.empty(2, 1, 128, 128, 128)
        out = model(x)
        volume = model.decode(out.tokens, check_ids=False)
    assert out.tokens.shape == out.importance.shape == (2, 8, 8, 8)
    assert out.z_e.shape == (2, config.embed_dim, 8, 8, 8)
    assert out.grade_logits.shape == (2, config.num_classes)
    assert volume.shape == x.shape


def test_parameter_counts_against_brats128():
    with torch.device("meta"):  # construction only: no memory, no initialisation cost
        paper_tok = VQGAN3D(TokenizerConfig.preset("paper128"))
        brats_tok = VQGAN3D(TokenizerConfig.preset("brats128"))
        paper_tr = MaskedTransformer(TransformerConfig.preset("paper128"))
        brats_tr = MaskedTransformer(TransformerConfig.preset("brats128"))
    assert 39.5e6 < parameters(paper_tok) < 40.5e6  # 39.84 M
    assert 19.5e6 < parameters(brats_tok) < 20.0e6  # 19.70 M
    assert parameters(paper_tok.grade_head) < parameters(brats_tok.grade_head) / 3  # 1.05 / 4.19 M
    # Same width and depth: only the positional tables differ (3 x 8 vs 3 x 16 rows).
    assert parameters(brats_tr) - parameters(paper_tr) == 3 * 8 * 512  # 38.91 M / 38.89 M


def test_paper128_runs_end_to_end_at_32():
    """The architecture at a reduced size: 32³ ROIs -> 2³ grids -> 32³ volumes."""
    torch.manual_seed(0)
    config = TokenizerConfig.preset("paper128", roi_size=32, base_channels=4)
    assert config.token_grid == (2, 2, 2)
    tokenizer = VQGAN3D(config).eval()
    x = torch.rand(2, 1, 32, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    out = tokenizer(x)
    assert out.reconstruction.shape == x.shape and torch.isfinite(out.reconstruction).all()
    assert out.grade_logits.shape == (2, 2)
    tokens, importance = tokenizer.encode(x)
    assert torch.equal(tokens, out.tokens) and ((importance > 0) & (importance < 1)).all()
    assert tokens.max() < 1024
    volume = tokenizer.decode(tokens)
    assert volume.shape == x.shape and volume.min() >= -1 and volume.max() <= 1

    transformer = TransformerConfig.preset(
        "paper128", token_grid=config.token_grid, dim=32, depth=1
    )
    generator = TumorGenerator(tokenizer, MaskedTransformer(transformer))
    rois = generator.generate(["HGG", "LGG"], seed=0, sampling=SamplingConfig(steps=4))
    assert rois.shape == (2, 1, 32, 32, 32) and torch.isfinite(rois).all()
