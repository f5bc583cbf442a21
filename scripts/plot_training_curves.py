"""Plot one metric of several training runs against the step, from their ``metrics.jsonl``.

The issue-10 runs are trained until token accuracy stops rising; this draws the curves that
show it (one line per run, smoothed over a moving window):

    python scripts/plot_training_curves.py /tmp/exp10/classifier_topk* --metric accuracy \\
        --out docs/images/stage2_accuracy.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from tumoraug.evaluation import save_line_plot


def read_curve(run: Path, metric: str, window: int) -> tuple[list[float], list[float]]:
    """(steps, moving average of ``metric``) of one run's metrics log."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    points = [(r["step"], r[metric]) for r in records if metric in r]
    if not points:
        raise SystemExit(f"{run}/metrics.jsonl: no {metric!r} values")
    steps, values = (np.array(v, dtype=float) for v in zip(*points, strict=True))
    width = max(1, min(window, len(values)))
    smooth = np.convolve(values, np.ones(width) / width, mode="valid")
    return steps[width - 1 :].tolist(), smooth.tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+", help="Training output folders.")
    parser.add_argument("--metric", default="accuracy")
    parser.add_argument("--window", type=int, default=10, help="Moving-average window (logs).")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write.")
    args = parser.parse_args()
    curves = {run.name: read_curve(run, args.metric, args.window) for run in args.runs}
    save_line_plot(curves, args.out, x_label="step", y_label=args.metric)
    for name, (steps, values) in curves.items():
        print(f"{name}: {args.metric} {values[-1]:.4f} at step {steps[-1]:g}")


if __name__ == "__main__":
    main()
