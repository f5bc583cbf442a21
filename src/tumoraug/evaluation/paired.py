"""Paired comparisons of each arm with real-only training on the same trials.

Two runs are a pair when they share the trial ``(repeat, fold, seed)``: the same test fold,
the same real training ROIs (or subsample) and the same initialisation seed. Per arm: the
mean and std of the paired difference ``metric(arm) − metric(real)``, how many pairs the
arm wins (strictly higher), ties and loses, and the p-value of the two-sided Wilcoxon
signed-rank test on the differences (`scipy.stats.wilcoxon`, ``zero_method="wilcox"``: zero
differences are dropped; its ``method="auto"`` is exact for up to 50 distinct non-zero
differences, otherwise a permutation test up to 13 and the normal approximation above).
Pairs where either AUC is undefined (a one-class test fold) are left out.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np

from tumoraug.evaluation.arms import Arm

TEST_NAME = "two-sided Wilcoxon signed-rank test (scipy.stats.wilcoxon, zero differences dropped)"


def wilcoxon_p(differences: Sequence[float]) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired ``differences``; NaN without any
    non-zero difference."""
    from scipy.stats import wilcoxon

    values = np.asarray([d for d in differences if not math.isnan(d)], dtype=np.float64)
    if not np.any(values != 0):
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = wilcoxon(values, zero_method="wilcox", alternative="two-sided")
    return float(result.pvalue)


def paired_comparison(
    reference: Mapping[Hashable, float], arm: Mapping[Hashable, float]
) -> dict[str, Any]:
    """Compare ``arm`` with ``reference``, both ``{pair key: metric}``, on their shared keys.

    Returns ``n`` (pairs used), ``deltas`` (in key order of ``arm``), their ``mean`` and
    sample ``std``, ``wins`` / ``ties`` / ``losses`` of the arm, and the Wilcoxon ``p``.
    """
    keys = [
        k for k in arm if k in reference and not (math.isnan(arm[k]) or math.isnan(reference[k]))
    ]
    deltas = [float(arm[k]) - float(reference[k]) for k in keys]
    values = np.asarray(deltas, dtype=np.float64)
    return {
        "n": len(keys),
        "pairs": [list(k) if isinstance(k, tuple) else k for k in keys],
        "deltas": [round(d, 6) for d in deltas],
        "mean": float(values.mean()) if values.size else math.nan,
        "std": float(values.std(ddof=1)) if values.size > 1 else 0.0,
        "wins": int(np.sum(values > 0)),
        "ties": int(np.sum(values == 0)),
        "losses": int(np.sum(values < 0)),
        "p": wilcoxon_p(deltas),
    }


def run_metric(runs: Sequence[Mapping[str, Any]], arm: str, metric: str) -> dict[tuple, float]:
    """``{(repeat, fold, seed): metric}`` of the runs of ``arm``."""
    out = {}
    for run in runs:
        if run.get("arm", run["condition"]) == arm:
            value = run["metrics"][metric]
            key = (int(run.get("repeat", 0)), int(run["fold"]), int(run["seed"]))
            out[key] = math.nan if value is None else float(value)
    return out


def compare_arms(
    runs: Sequence[Mapping[str, Any]], arms: Sequence[Arm], metric: str = "auc"
) -> list[dict[str, Any]]:
    """One paired comparison with ``real`` per other arm (empty without a ``real`` arm)."""
    if not any(arm.key == "real" for arm in arms):
        return []
    reference = run_metric(runs, "real", metric)
    rows = []
    for arm in arms:
        if arm.key == "real":
            continue
        values = run_metric(runs, arm.key, metric)
        finite = np.asarray([v for v in values.values() if not math.isnan(v)])
        row = {"arm": arm.key, "name": arm.name, "metric": metric, "test": TEST_NAME}
        row.update(
            condition=arm.condition,
            ratio=arm.ratio,
            source=arm.source,
            guidance=arm.guidance,
            arm_mean=float(finite.mean()) if finite.size else math.nan,
            arm_std=float(finite.std(ddof=1)) if finite.size > 1 else 0.0,
        )
        rows.append({**row, **paired_comparison(reference, values)})
    return rows


def format_p(p: float) -> str:
    """A p-value for a table: 3 significant digits, ``<0.001`` below that, ``–`` if undefined."""
    if p is None or math.isnan(p):
        return "–"
    return "<0.001" if p < 0.001 else f"{p:.3g}"


def comparison_markdown(rows: Sequence[Mapping[str, Any]], reference_n: int) -> str:
    """The paired table: arm, AUC mean ± std, ΔAUC paired (mean ± std), wins / runs, p."""
    lines = [
        f"Paired with real only on the same trials ({reference_n} real-only runs: same test "
        "folds, real training ROIs and seeds); ΔAUC = arm − real; wins = runs with a higher "
        f"AUC; p: {TEST_NAME}.",
        "",
        "| Arm | AUC | ΔAUC paired | Wins / runs | p |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        tied = f" ({row['ties']} tied)" if row["ties"] else ""
        lines.append(
            f"| {row['name']} | {row['arm_mean']:.3f} ± {row['arm_std']:.3f} | "
            f"{row['mean']:+.3f} ± {row['std']:.3f} | {row['wins']} / {row['n']}{tied} | "
            f"{format_p(row['p'])} |"
        )
    return "\n".join(lines) + "\n"
