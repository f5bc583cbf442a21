"""What a protocol run gives: every run, the per-arm summary, the paired comparisons, files.

``results.md`` holds the papers' table (one row per arm, ``mean ± std`` of AUC, F1, Acc,
Prec, Rec), then, with a ``real`` arm and other arms, the paired table of
`tumoraug.evaluation.paired`, then the real training set and the synthetic sources.
``results.json`` holds the settings, the sources, the summary, the comparisons and every
run with its training and test indices and test predictions; ``roc.png`` the pooled ROC
curves.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np

from tumoraug.config import Config
from tumoraug.evaluation.arms import Arm, build_arms
from tumoraug.evaluation.classifier import ClassifierConfig
from tumoraug.evaluation.paired import compare_arms, comparison_markdown
from tumoraug.evaluation.plots import save_roc_png
from tumoraug.evaluation.report import write_tables
from tumoraug.metrics import classification_metrics, roc_curve

METRICS = ("auc", "f1", "accuracy", "precision", "recall")
METRIC_HEADERS = {"auc": "AUC", "f1": "F1", "accuracy": "Acc", "precision": "Prec", "recall": "Rec"}
MAX_ROC_CURVES = 5
"""``roc.png`` shows every arm up to this many, else real only and the best other arms."""


def describe_source(name: str, info: dict[str, Any]) -> str:
    """One line naming a synthetic source, where it came from and how it was made."""
    sampling = info.get("sampling") or info.get("settings") or {}
    labels = (("steps", "steps"), ("guidance_scale", "guidance"), ("temperature", "temperature"))
    how = ", ".join(
        f"{label} {sampling[key]:g}" for key, label in labels if sampling.get(key) is not None
    )
    count = info.get("count", info.get("n"))
    if info.get("kind") == "model":
        made = f"model {info.get('model')}, {count} ROIs generated once (HGG share "
        made += f"{info.get('class_ratio', 0.5):g}, seed {info.get('seed', 0)}"
        made += f", sampling: {how})" if how else ")"
    elif info.get("kind") == "bank":
        made = f"bank {info.get('bank')} of model {info.get('model')}, {count} ROIs"
        made += f" (sampling: {how})" if how else ""
    elif info.get("kind") == "roi_dir":
        made = f"ROI folder {info.get('path')}, {count} ROIs"
    else:
        made = f"{count} ROIs"
    return f"{name}: {made}"


@dataclasses.dataclass
class ProtocolResult:
    """Per-run metrics and predictions, plus the settings and sources that produced them.

    ``config`` is the `ProtocolConfig`; ``arms`` the arms in table order; ``sources`` the
    description of each synthetic source by name (model id or bank, count, sampling).
    """

    config: Config
    classifier: ClassifierConfig
    runs: list[dict[str, Any]]
    n_real: int
    n_synthetic: int | None = None
    seconds: float = 0.0
    arms: list[Arm] = dataclasses.field(default_factory=list)
    sources: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.arms:  # a result built by hand: one arm per condition
            conditions = getattr(self.config, "conditions", ("real",))
            ratio = getattr(self.config, "ratio", 1.0)
            self.arms = build_arms(conditions, (ratio,), self.sources or {"synthetic": {}})

    def arm_runs(self, arm: Arm) -> list[dict[str, Any]]:
        """The runs of ``arm``, in run order."""
        return [r for r in self.runs if r.get("arm", r["condition"]) == arm.key]

    def summary(self) -> dict[str, dict[str, dict[str, float]]]:
        """``{arm key: {metric: {"mean", "std", "n"}}}``; std is the sample std (ddof=1).

        With one ratio and one source the arm keys are the condition names.
        """
        out: dict[str, dict[str, dict[str, float]]] = {}
        for arm in self.arms:
            runs = self.arm_runs(arm)
            out[arm.key] = {}
            for metric in METRICS:
                values = np.array([r["metrics"][metric] for r in runs], dtype=np.float64)
                values = values[~np.isnan(values)]
                std = float(values.std(ddof=1)) if values.size > 1 else 0.0
                mean = float(values.mean()) if values.size else math.nan
                out[arm.key][metric] = {"mean": mean, "std": std, "n": int(values.size)}
        return out

    def comparisons(self) -> list[dict[str, Any]]:
        """Paired AUC comparison of every arm with ``real`` (see `tumoraug.evaluation.paired`)."""
        return compare_arms(self.runs, self.arms, "auc")

    def settings_lines(self) -> list[str]:
        """The real training set per run and the synthetic sources, one line each."""
        lines = []
        subsampled = getattr(self.config, "train_size", None) is not None or (
            getattr(self.config, "hgg_share", None) is not None
        )
        if subsampled and self.runs:
            lgg, hgg = self.runs[0]["real_counts"]
            sizes = sorted({len(r["test_indices"]) for r in self.runs})
            tested = f"{sizes[0]}" if len(sizes) == 1 else f"{sizes[0]}–{sizes[-1]}"
            lines.append(
                f"Real training ROIs per run: {lgg + hgg} ({hgg} HGG, {lgg} LGG), a seeded "
                f"subsample of the training fold, new for each of the "
                f"{len(self.arm_runs(self.arms[0]))} runs per arm; test folds: "
                f"{tested} ROIs, never subsampled."
            )
        lines += [f"Synthetic source {describe_source(n, i)}." for n, i in self.sources.items()]
        return lines

    def to_markdown(self) -> str:
        """The papers' table (one row per arm), the paired table, the settings."""
        header = "| Condition | " + " | ".join(METRIC_HEADERS[m] for m in METRICS) + " |"
        lines = [header, "|" + "---|" * (len(METRICS) + 1)]
        summary = self.summary()
        for arm in self.arms:
            stats = summary[arm.key]
            cells = [f"{stats[m]['mean']:.3f} ± {stats[m]['std']:.3f}" for m in METRICS]
            lines.append(f"| {arm.title} | " + " | ".join(cells) + " |")
        text = "\n".join(lines) + "\n"
        rows = self.comparisons()
        if rows:
            n_reference = len(self.arm_runs(self.arms[0]))
            text += "\n" + comparison_markdown(rows, n_reference)
        settings = self.settings_lines()
        if settings:
            text += "\n" + "\n".join(f"- {line}" for line in settings) + "\n"
        return text

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible: settings, sources, arms, summary, comparisons and every run."""
        return {
            "protocol": self.config.to_dict(),
            "classifier": self.classifier.to_dict(),
            "n_real": self.n_real,
            "n_synthetic": self.n_synthetic,
            "seconds": round(self.seconds, 2),
            "sources": self.sources,
            "arms": [arm.to_dict() for arm in self.arms],
            "summary": self.summary(),
            "comparisons": self.comparisons(),
            "runs": self.runs,
        }

    def roc_curves(self) -> dict[str, tuple[np.ndarray, np.ndarray, float]]:
        """Per arm: ROC of the test predictions pooled over its runs.

        Every arm when there are at most `MAX_ROC_CURVES`, else ``real`` and the other arms
        of the highest mean AUC (``results.json`` has every run's predictions).
        """
        arms = [arm for arm in self.arms if self.arm_runs(arm)]
        if len(arms) > MAX_ROC_CURVES:
            summary = self.summary()

            def score(arm: Arm) -> float:
                mean = summary[arm.key]["auc"]["mean"]
                return math.inf if arm.key == "real" else -math.inf if math.isnan(mean) else mean

            keep = {a.key for a in sorted(arms, key=score, reverse=True)[:MAX_ROC_CURVES]}
            arms = [arm for arm in arms if arm.key in keep]
        curves = {}
        for arm in arms:
            runs = self.arm_runs(arm)
            labels = np.concatenate([r["labels"] for r in runs])
            probs = np.concatenate([r["probs"] for r in runs])
            fpr, tpr, _ = roc_curve(labels, probs)
            auc = classification_metrics(labels, probs)["auc"]
            curves[arm.title] = (fpr, tpr, auc)
        return curves

    def save(self, out_dir: str | Path) -> dict[str, Path]:
        """Write ``results.md``, ``results.json`` and ``roc.png`` into ``out_dir``."""
        paths = write_tables(out_dir, "results", self.to_markdown(), self.to_dict())
        paths["roc"] = Path(out_dir) / "roc.png"
        save_roc_png(self.roc_curves(), paths["roc"])
        return paths
