"""Train the stage-2 transformer of the embedded demo model (or one arm of the topk ablation).

Trains a small `MaskedTransformer` on the tokens of an already trained tokenizer and a 32³
phantom ROI cache, then writes a clean, shippable model folder (``tumoraug.json``,
``tokenizer/``, ``transformer/``, no checkpoints or corpus) to ``--ship``. The embedded demo
model at ``src/tumoraug/pretrained/demo`` was made with::

    OMP_NUM_THREADS=1 python scripts/tokenizer_quality.py --work /tmp/tokq2 --preset small32 \\
        --steps 4000 --batch-size 4 --lr 5e-4
    OMP_NUM_THREADS=1 python scripts/train_demo_model.py \\
        --tokenizer /tmp/tokq2/run_small32_s4000/tokenizer --data /tmp/tokq2/cache32 \\
        --out /tmp/exp10/classifier_topk0.25 --topk-ratio 0.25 --steps 1500 --batch-size 16 \\
        --ship src/tumoraug/pretrained/demo

The same settings with ``--topk-ratio 0`` / ``0.5`` give the other arms of the ablation
(``scripts/run_experiments.sh``, ``docs/results.md``). The equivalent CLI call is printed
before training; ``scripts/record_demo_checksums.py`` re-records the test checksums of a
newly shipped demo.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from tumoraug import TumorGenerator
from tumoraug.config import TransformerConfig
from tumoraug.training import TrainConfig, TransformerRecipe, train_transformer

SHIPPED = ("tumoraug.json", "tokenizer", "transformer")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", type=Path, required=True, help="Trained tokenizer folder.")
    parser.add_argument("--data", type=Path, required=True, help="ROI cache (32³ phantoms).")
    parser.add_argument("--out", type=Path, required=True, help="Training folder.")
    parser.add_argument("--topk-ratio", type=float, default=0.25)
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--dim", type=int, default=96)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr-schedule", default="constant", help="constant or cosine.")
    parser.add_argument(
        "--no-balance", action="store_true", help="Plain loss: grades weighed by their share."
    )
    parser.add_argument("--validation", type=Path, default=None, help="Held-out ROI cache.")
    parser.add_argument("--ship", type=Path, default=None, help="Copy the final model here.")
    args = parser.parse_args()

    config = TransformerConfig.preset("tiny", dim=args.dim, depth=args.depth, heads=4, dropout=0.1)
    recipe = TransformerRecipe(topk_ratio=args.topk_ratio, balance_classes=not args.no_balance)
    args.out.mkdir(parents=True, exist_ok=True)
    config.to_json(args.out / "transformer_config.json")
    print(
        f"CLI equivalent: tumoraug train-transformer --tokenizer {args.tokenizer} --data"
        f" {args.data} --out {args.out} --config {args.out / 'transformer_config.json'}"
        f" --topk-ratio {args.topk_ratio:g} --steps {args.steps} --batch-size {args.batch_size}"
        f" --lr {args.lr:g} --warmup {args.warmup} --device cpu --seed {args.seed}"
        f" --lr-schedule {args.lr_schedule} --checkpoint-every 200"
        + (f" --validation {args.validation}" if args.validation else ""),
        flush=True,
    )
    train = TrainConfig(
        steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup_steps=args.warmup,
        device="cpu", seed=args.seed, checkpoint_every=200, lr_schedule=args.lr_schedule,
    )  # fmt: skip
    start = time.perf_counter()
    train_transformer(
        config, (args.tokenizer, args.data), args.out, train, recipe, progress=False,
        validation=args.validation,
    )  # fmt: skip
    minutes = (time.perf_counter() - start) / 60
    lines = (args.out / "metrics.jsonl").read_text().splitlines()
    summary = {"train_minutes": round(minutes, 2), "final": json.loads(lines[-1])}
    (args.out / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary), flush=True)

    if args.ship is not None:
        TumorGenerator.from_pretrained(args.out, device="cpu")  # checks the folder is complete
        args.ship.mkdir(parents=True, exist_ok=True)
        for name in SHIPPED:
            source, target = args.out / name, args.ship / name
            if source.is_dir():
                shutil.copytree(source, target, dirs_exist_ok=True)
            else:
                shutil.copy2(source, target)
        print(f"shipped model to {args.ship}")


if __name__ == "__main__":
    main()
