"""Held-out token accuracy of trained generators, overall and per grade.

Encodes a held-out ROI cache with each model's own tokenizer and scores its transformer the
way ``train-transformer --validation`` does during training (the same fixed corruption
draws, no class dropout), with the masking recipe given here:

    python scripts/heldout_accuracy.py /tmp/exp10/imb_balanced /tmp/exp10/imb_plain \\
        --data /tmp/exp10/val_cache32 --topk-ratio 0.25
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from tumoraug import TumorGenerator
from tumoraug.training import TransformerRecipe
from tumoraug.training.corpus import encode_corpus
from tumoraug.training.transformer import TransformerTask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", type=Path, nargs="+", help="Model folders (tumoraug.json).")
    parser.add_argument("--data", type=Path, required=True, help="Held-out ROI cache.")
    parser.add_argument("--topk-ratio", type=float, default=0.25)
    parser.add_argument("--masking", default="hybrid", help="hybrid or random.")
    args = parser.parse_args()
    recipe = TransformerRecipe(masking=args.masking, topk_ratio=args.topk_ratio)
    device = torch.device("cpu")
    print("| Model | val_loss | val_accuracy | LGG | HGG |\n|---|---|---|---|---|")
    for folder in args.models:
        generator = TumorGenerator.from_pretrained(folder, device="cpu")
        corpus = encode_corpus(generator.tokenizer, args.data, device="cpu")
        model = generator.transformer
        task = TransformerTask(model, recipe, lr=1e-3, validation=corpus)
        s = task.validate(model, device)
        print(
            f"| {folder.name} | {s['val_loss']:.4f} | {s['val_accuracy']:.4f} | "
            f"{s['val_accuracy/LGG']:.4f} | {s['val_accuracy/HGG']:.4f} |"
        )


if __name__ == "__main__":
    main()
