"""Evaluation of synthetic ROIs: sample metrics and the downstream LGG/HGG protocol.

* `classifier`: the 3D ResNet, its training loop and predictions;
* `protocol`: cross-validation arms with and without synthetic data (`run_protocol`);
* `arms`: the conditions (real, mixed, pretrain, balance, synthetic_only) × ratio × source;
* `splits`: stratified folds, repeats and low-data training subsamples (the trials);
* `paired`: each arm against real-only on the same trials (ΔAUC, wins, Wilcoxon p);
* `result`: the protocol's result, its tables and files;
* `samples`: fidelity (MMD) and diversity (MS-SSIM) per model and grade (`evaluate_samples`);
* `sources`: the protocol's synthetic data from a model (per guidance), a bank or a folder;
* `plots` and `report`: line plots (ROC, training curves) and the Markdown + JSON files;
* `runs`: both evaluations end to end on folders (what the CLI calls).
"""

from tumoraug.evaluation.arms import ALL_CONDITIONS, CONDITIONS, Arm, build_arms
from tumoraug.evaluation.classifier import (
    NETWORKS,
    ClassifierConfig,
    MonaiClassifier,
    ResNet3D,
    build_classifier,
    predict,
    train_classifier,
)
from tumoraug.evaluation.paired import compare_arms, paired_comparison, wilcoxon_p
from tumoraug.evaluation.plots import save_line_plot, save_roc_png
from tumoraug.evaluation.protocol import (
    ProtocolConfig,
    run_protocol,
    synthetic_demand,
    training_stages,
)
from tumoraug.evaluation.result import ProtocolResult
from tumoraug.evaluation.runs import compare_models, evaluate_cache
from tumoraug.evaluation.samples import SampleReport, evaluate_samples
from tumoraug.evaluation.sources import materialize, synthetic_source, synthetic_sources
from tumoraug.evaluation.splits import Trial, plan_trials, stratified_folds, subsample_training

__all__ = [
    "ALL_CONDITIONS",
    "CONDITIONS",
    "NETWORKS",
    "Arm",
    "ClassifierConfig",
    "MonaiClassifier",
    "ProtocolConfig",
    "ProtocolResult",
    "ResNet3D",
    "SampleReport",
    "Trial",
    "build_arms",
    "build_classifier",
    "compare_arms",
    "compare_models",
    "evaluate_cache",
    "evaluate_samples",
    "materialize",
    "paired_comparison",
    "plan_trials",
    "predict",
    "run_protocol",
    "save_line_plot",
    "save_roc_png",
    "stratified_folds",
    "subsample_training",
    "synthetic_demand",
    "synthetic_source",
    "synthetic_sources",
    "train_classifier",
    "training_stages",
    "wilcoxon_p",
]
