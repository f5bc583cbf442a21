"""Paired comparisons with real-only training: ΔAUC, wins and the Wilcoxon p-value by hand."""

from __future__ import annotations

import itertools
import math

import pytest

from tumoraug.evaluation import Arm, compare_arms, paired_comparison, wilcoxon_p
from tumoraug.evaluation.paired import comparison_markdown, format_p

# AUCs of 11 paired runs (fold, seed): real only, and an arm that wins 8, ties 1, loses 2.
REAL = [0.50, 0.60, 0.70, 0.55, 0.65, 0.75, 0.45, 0.80, 0.52, 0.58, 0.66]
DELTAS = [0.05, -0.02, 0.03, 0.07, 0.01, 0.04, 0.06, -0.08, 0.09, 0.10, 0.0]


def exact_two_sided_p(deltas: list[float]) -> float:
    """The signed-rank test by enumeration: drop zeros, rank |d| (no ties here), and count
    the sign patterns whose W+ is at least as far from its mean as the observed one."""
    nonzero = [d for d in deltas if d != 0]
    order = sorted(range(len(nonzero)), key=lambda i: abs(nonzero[i]))
    ranks = {i: r + 1 for r, i in enumerate(order)}
    observed = sum(ranks[i] for i, d in enumerate(nonzero) if d > 0)
    n = len(nonzero)
    mean = n * (n + 1) / 4
    extreme = sum(
        1
        for signs in itertools.product((0, 1), repeat=n)
        if abs(sum(r for s, r in zip(signs, range(1, n + 1), strict=True) if s) - mean)
        >= abs(observed - mean) - 1e-12
    )
    return extreme / 2**n


def runs_of(arm: str, aucs: list[float]) -> list[dict]:
    return [
        {"arm": arm, "condition": arm.split()[0], "repeat": 0, "fold": i % 4, "seed": i // 4,
         "metrics": {"auc": auc}}
        for i, auc in enumerate(aucs)
    ]  # fmt: skip


def test_wins_and_wilcoxon_match_a_hand_computation():
    arm_aucs = [round(r + d, 6) for r, d in zip(REAL, DELTAS, strict=True)]
    runs = runs_of("real", REAL) + runs_of("mixed", arm_aucs)
    arms = [Arm("real", "real"), Arm("mixed", "mixed", ratio=5.0, source="guidance 1.5")]
    (row,) = compare_arms(runs, arms)
    assert row["name"] == "mixed × ratio 5 × guidance 1.5"
    assert (row["n"], row["wins"], row["ties"], row["losses"]) == (11, 8, 1, 2)
    assert row["mean"] == pytest.approx(sum(DELTAS) / 11)
    assert row["arm_mean"] == pytest.approx(sum(arm_aucs) / 11)
    by_hand = exact_two_sided_p(DELTAS)
    # W- = 2 + 8 = 10 of 55; 43 of the 2^10 sign patterns give W- <= 10, as many W+ <= 10.
    assert by_hand == pytest.approx(2 * 43 / 1024)
    assert row["p"] == pytest.approx(by_hand)
    assert "two-sided Wilcoxon" in row["test"]
    table = comparison_markdown([row], 11).splitlines()
    assert table[2] == "| Arm | AUC | ΔAUC paired | Wins / runs | p |"
    assert table[4].startswith("| mixed × ratio 5 × guidance 1.5 | ")
    assert "| +0.032 ± " in table[4] and "| 8 / 11 (1 tied) | 0.084 |" in table[4]


def test_pairs_are_matched_by_trial_and_undefined_aucs_are_left_out():
    reference = {(0, 0, 0): 0.5, (0, 1, 0): 0.6, (0, 2, 0): math.nan, (0, 3, 0): 0.7}
    arm = {(0, 3, 0): 0.8, (0, 0, 0): 0.4, (0, 2, 0): 0.9, (0, 9, 9): 1.0}
    result = paired_comparison(reference, arm)
    assert result["n"] == 2 and result["pairs"] == [[0, 3, 0], [0, 0, 0]]
    assert result["deltas"] == [pytest.approx(0.1), pytest.approx(-0.1)]
    assert (result["wins"], result["losses"]) == (1, 1)


def test_wilcoxon_edge_cases_and_p_formatting():
    assert math.isnan(wilcoxon_p([0.0, 0.0]))
    assert wilcoxon_p([0.1] * 6) == pytest.approx(1 / 32)  # all 6 positive: 2 / 2⁶
    assert compare_arms(runs_of("mixed", [0.5]), [Arm("mixed", "mixed", ratio=1.0)]) == []
    assert [format_p(p) for p in (math.nan, 0.0004, 0.04567, 1.0)] == ["–", "<0.001", "0.0457", "1"]
