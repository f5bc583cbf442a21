"""The arms of the downstream protocol: a condition × a synthetic amount × a synthetic source.

Conditions:

* ``real``: the real training ROIs only (the reference every other arm is paired with);
* ``mixed``: real + ``ratio`` × as many synthetic ROIs, shuffled together;
* ``pretrain``: pre-train on ``ratio`` × as many synthetic ROIs, then fine-tune on real;
* ``balance``: real + synthetic ROIs of the minority grade (LGG in BraTS), as many as make
  the two grades equal, × ``balance_factor``;
* ``synthetic_only``: ``ratio`` × as many synthetic ROIs and no real ROI (tested on real,
  as every arm is): does the synthetic data carry the real grade signal?

``real`` has one arm; ``balance`` one per source; the others one per source and ratio.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

CONDITIONS = ("real", "mixed", "pretrain")
"""The default conditions (those of the papers)."""
ALL_CONDITIONS = (*CONDITIONS, "balance", "synthetic_only")
"""Every condition the protocol knows."""
RATIO_CONDITIONS = ("mixed", "pretrain", "synthetic_only")
"""The conditions whose amount of synthetic data is ``ratio`` × the real training ROIs."""


def condition_title(condition: str, ratio: float, details: Sequence[str] | None = None) -> str:
    """Human title of a condition for tables and plots; ``details`` name ratio and source."""
    inner = ", ".join(details) if details is not None else f"ratio {ratio:g}"
    extra = f" ({inner})" if details else ""
    return {
        "real": "Real only",
        "mixed": f"Real + synthetic ({inner})",
        "pretrain": f"Pre-train synthetic{extra}, fine-tune real",
        "balance": f"Real + synthetic minority grade to balance{extra}",
        "synthetic_only": f"Synthetic only ({inner})",
    }[condition]


@dataclasses.dataclass(frozen=True)
class Arm:
    """One arm: what its classifiers train on. ``key`` is unique within a protocol run."""

    key: str
    condition: str
    ratio: float | None = None
    source: str | None = None
    guidance: float | None = None
    balance_factor: float | None = None
    title: str = ""

    @property
    def name(self) -> str:
        """Condition × ratio × source, e.g. ``mixed × ratio 5 × guidance 1.5``."""
        parts = [self.condition]
        if self.ratio is not None:
            parts.append(f"ratio {self.ratio:g}")
        if self.balance_factor is not None and self.balance_factor != 1:
            parts.append(f"factor {self.balance_factor:g}")
        if self.source is not None:
            parts.append(self.source)
        return " × ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible description (with the full ``name``)."""
        return {**dataclasses.asdict(self), "name": self.name}


def build_arms(
    conditions: Sequence[str],
    ratios: Sequence[float],
    sources: Mapping[str, Mapping[str, Any]],
    balance_factor: float = 1.0,
) -> list[Arm]:
    """The arms of ``conditions`` × ``ratios`` × ``sources``, in that order of nesting.

    ``sources`` maps a source name to its description (its ``"guidance"`` is recorded on the
    arm). Keys and titles name the ratio only when several are swept and the source only when
    there are several, so that a run with one ratio and one source keeps the condition
    names as keys (``"real"``, ``"mixed"``, ...).
    """
    many_ratios, many_sources = len(ratios) > 1, len(sources) > 1
    arms = []
    for condition in conditions:
        if condition == "real":
            arms.append(Arm("real", "real", title=condition_title("real", 1.0)))
            continue
        for source, info in sources.items():
            guidance = info.get("guidance")
            guidance = None if guidance is None else float(guidance)
            for ratio in ratios if condition in RATIO_CONDITIONS else (None,):
                key, details = condition, []
                if ratio is not None and (many_ratios or condition != "pretrain"):
                    details.append(f"ratio {ratio:g}")
                    key += f" ×{ratio:g}" if many_ratios else ""
                if condition == "balance" and balance_factor != 1:
                    details.append(f"factor {balance_factor:g}")
                if many_sources:
                    details.append(source)
                    key += f" @ {source}"
                title = condition_title(condition, ratio or 1.0, details)
                factor = balance_factor if condition == "balance" else None
                arms.append(Arm(key, condition, ratio, source, guidance, factor, title))
    return arms
