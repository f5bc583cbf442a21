"""Evaluation of synthetic ROIs: sample metrics and the downstream LGG/HGG protocol.

* `classifier`: the 3D ResNet, its training loop and predictions;
* `protocol`: cross-validation with and without synthetic data (`run_protocol`);
* `samples`: fidelity (MMD) and diversity (MS-SSIM) per model and grade (`evaluate_samples`);
* `sources`: the protocol's synthetic data from a model, a bank or a ROI folder;
* `plots` and `report`: the ROC figure and the Markdown + JSON files of both reports;
* `runs`: both evaluations end to end on folders (what the CLI calls).
"""

from tumoraug.evaluation.classifier import ClassifierConfig, ResNet3D, predict, train_classifier
from tumoraug.evaluation.plots import save_roc_png
from tumoraug.evaluation.protocol import (
    ProtocolConfig,
    ProtocolResult,
    run_protocol,
    stratified_folds,
)
from tumoraug.evaluation.runs import compare_models, evaluate_cache
from tumoraug.evaluation.samples import SampleReport, evaluate_samples
from tumoraug.evaluation.sources import materialize, synthetic_source

__all__ = [
    "ClassifierConfig",
    "ProtocolConfig",
    "ProtocolResult",
    "ResNet3D",
    "SampleReport",
    "compare_models",
    "evaluate_cache",
    "evaluate_samples",
    "materialize",
    "predict",
    "run_protocol",
    "save_roc_png",
    "stratified_folds",
    "synthetic_source",
    "train_classifier",
]
