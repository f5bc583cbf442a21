"""Mean ± std over several `tumoraug evaluate-samples` runs (e.g. sample seeds 0, 1, 2).

    python scripts/aggregate_samples.py /tmp/exp/eval_ablation*/samples.json

Prints one Markdown row per (model, grade): MMD ×10⁴, MS-SSIM of the generated sets and of
the real set, each as mean ± sample std (ddof 1) over the given runs, and (reports that
have them) the mean relative differences of the intensity statistics from the real set.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path


def cell(values: list[float], digits: int) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.{digits}f} ± {spread:.{digits}f}"


def main() -> None:
    runs = [json.loads(Path(p).read_text()) for p in sys.argv[1:]]
    if not runs:
        raise SystemExit("usage: aggregate_samples.py samples.json [samples.json ...]")
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for run in runs:
        for row in run["rows"]:
            groups[(Path(row["model"]).name, row["grade"])].append(row)
    print(f"{len(runs)} runs (seeds {', '.join(str(r['settings']['seed']) for r in runs)})\n")
    stats = ("mean_intensity", "hyperintense_share", "core_share")
    print(
        "| Model | Grade | MMD ×10⁴ | MS-SSIM generated | MS-SSIM real | Δ mean int. "
        "| Δ hyperint. | Δ core |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for (model, grade), rows in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        diffs = [
            f"{statistics.fmean(r['stats_relative_difference'][k] for r in rows):+.1%}"
            if all("stats_relative_difference" in r for r in rows)
            else "-"
            for k in stats
        ]
        print(
            f"| {model} | {grade} | {cell([r['mmd_1e4'] for r in rows], 0)} | "
            f"{cell([r['ms_ssim_generated'] for r in rows], 3)} | "
            f"{cell([r['ms_ssim_real'] for r in rows], 3)} | {' | '.join(diffs)} |"
        )


if __name__ == "__main__":
    main()
