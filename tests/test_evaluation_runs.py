"""Both evaluations end to end on folders, as the CLI calls them."""

from __future__ import annotations

import json

from tumoraug.evaluation import ProtocolConfig, compare_models, evaluate_cache
from tumoraug.evaluation.runs import display_names
from tumoraug.sampling import SamplingConfig

TINY = ProtocolConfig(folds=2, run_folds=1, seeds=(0,), epochs=1, pretrain_epochs=1, device="cpu")


def test_display_names_are_folder_names_made_unique():
    assert display_names(["runs/a", "runs/b/", "other/a", "org/model"]) == [
        "a",
        "b",
        "a-2",
        "model",
    ]


def test_evaluate_cache_picks_conditions_from_the_source(roi_cache, tmp_path):
    result, paths = evaluate_cache(roi_cache, tmp_path / "real", protocol=TINY, width=4)
    assert result.config.conditions == ("real",) and result.n_synthetic is None
    assert result.classifier.base_width == 4 and result.classifier.in_channels == 1
    assert sorted(paths) == ["json", "markdown", "roc"]

    mixed, paths = evaluate_cache(roi_cache, tmp_path / "all", protocol=TINY, synthetic=roi_cache)
    assert mixed.config.conditions == ("real", "mixed", "pretrain") and mixed.n_synthetic == 6
    assert json.loads(paths["json"].read_text())["protocol"]["conditions"] == list(
        mixed.config.conditions
    )
    only, _ = evaluate_cache(
        roi_cache, tmp_path / "one", protocol=TINY, synthetic=roi_cache, conditions=["pretrain"]
    )
    assert [run["condition"] for run in only.runs] == ["pretrain"]


def test_compare_models_names_the_rows_and_records_the_sampling(
    roi_cache, tiny_model_dir, tmp_path
):
    sampling = SamplingConfig(steps=2, guidance_scale=1.0)
    report, paths = compare_models(
        roi_cache, [tiny_model_dir], tmp_path, n_per_class=2, sampling=sampling, device="cpu"
    )
    assert [row["model"] for row in report.rows] == ["tiny-generator"] * 2
    assert json.loads(paths["json"].read_text())["settings"]["sampling"] == sampling.to_dict()
    assert paths["montage"].exists()


def test_evaluate_cache_makes_one_source_per_guidance_and_records_it(
    roi_cache, tiny_model_dir, tmp_path
):
    protocol = {**TINY.to_dict(), "conditions": ("real", "synthetic_only"), "ratios": (0.5, 1)}
    result, paths = evaluate_cache(
        roi_cache, tmp_path, protocol=protocol, model=tiny_model_dir, width=4, seed=3,
        sampling=SamplingConfig(steps=2), guidance_values=[1.0, 3.0],
        conditions=("real", "synthetic_only"),
    )  # fmt: skip
    data = json.loads(paths["json"].read_text())
    assert list(data["sources"]) == ["guidance 1", "guidance 3"]
    for name, guidance in (("guidance 1", 1.0), ("guidance 3", 3.0)):
        source = data["sources"][name]
        assert source["kind"] == "model" and source["model"] == str(tiny_model_dir)
        assert source["sampling"] == SamplingConfig(steps=2, guidance_scale=guidance).to_dict()
        assert source["count"] == source["n"] == 3  # the largest arm: 1 x 3 training ROIs
        assert source["seed"] == 3
    assert [a["name"] for a in data["arms"]] == [
        "real",
        "synthetic_only × ratio 0.5 × guidance 1",
        "synthetic_only × ratio 1 × guidance 1",
        "synthetic_only × ratio 0.5 × guidance 3",
        "synthetic_only × ratio 1 × guidance 3",
    ]
    assert len(result.comparisons()) == 4
    text = paths["markdown"].read_text()
    assert f"Synthetic source guidance 3: model {tiny_model_dir}, 3 ROIs generated once" in text


def test_evaluate_cache_guidance_values_need_a_model(roi_cache, tmp_path):
    import pytest

    from tumoraug.errors import ConfigError

    with pytest.raises(ConfigError, match="guidance_values need a model"):
        evaluate_cache(
            roi_cache, tmp_path, protocol=TINY, synthetic=roi_cache, guidance_values=[1.0, 2.0]
        )
