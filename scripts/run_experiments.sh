#!/usr/bin/env bash
# The experiments of docs/results.md, on CPU, on 32³ phantom ROIs:
#   1. three stage-2 generators on one tokenizer, identical except topk_ratio 0 / 0.25 / 0.5
#      (800 steps each; the 0 run is the embedded demo model), and the 0.25 run continued
#      to 2000 steps;
#   2. the downstream protocol (5 folds x 3 seeds), real only vs pre-train on synthetic, on
#      phantoms the generators never saw (seed 1; the generators saw seed 0);
#   3. the topk_ratio ablation with `tumoraug evaluate-samples`, plus reference rows;
#   4. a diagnostic: classifiers trained on synthetic ROIs only, tested on real ones.
# Usage, inside the project's venv (python and tumoraug on PATH), from the repository root:
#   bash scripts/run_experiments.sh [WORK_DIR]   (default /tmp/exp)
# Steps 0-3 are skipped when their output exists; step 4 prints its table each time. Steps run
# one after another here; the published run ran two at a time (see docs/results.md).
set -euo pipefail
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
W="${1:-/tmp/exp}"
TOKQ="${TOKQ:-/tmp/tokq}"
TOK="$TOKQ/run_tw0.1_s900/tokenizer"
mkdir -p "$W"

timed() {
    local start=$SECONDS
    "$@"
    echo "[$((SECONDS - start)) s] $*" | tee -a "$W/times.log"
}

# 0. Tokenizer (stage 1) and its data: 120 phantoms (seed 0, 64³) -> 32³ ROIs; 100 train.
if [ ! -f "$TOK/config.json" ]; then
    timed python scripts/tokenizer_quality.py --work "$TOKQ" --steps 900 --batch-size 4 \
        --tumor-weight 0.1
fi

# 1. Generators: same tokenizer, data, seed and schedule; only topk_ratio differs.
for k in 0.25 0 0.5; do
    if [ ! -f "$W/gen_topk$k/tumoraug.json" ]; then
        timed python scripts/train_demo_model.py --tokenizer "$TOK" --data "$TOKQ/cache32" \
            --out "$W/gen_topk$k" --topk-ratio "$k" --steps 800
    fi
done

# The topk 0.25 run resumed from its last checkpoint up to 2000 steps.
if [ ! -f "$W/demo_s2000/train_summary.json" ] || ! grep -q '"step": 2000' "$W/demo_s2000/train_summary.json"; then
    [ -d "$W/demo_s2000" ] || cp -r "$W/gen_topk0.25" "$W/demo_s2000"
    timed python scripts/train_demo_model.py --tokenizer "$TOK" --data "$TOKQ/cache32" \
        --out "$W/demo_s2000" --topk-ratio 0.25 --steps 2000
fi

# 2. Downstream protocol on held-out phantoms (different seed: no subject seen in training).
if [ ! -f "$W/real_cache32/manifest.json" ]; then
    timed tumoraug phantom "$W/real_phantoms" --per-class 50 --seed 1 --shape 64 64 64
    timed tumoraug preprocess "$W/real_phantoms" "$W/real_cache32" --size 32
fi
if [ ! -f "$W/eval_downstream/results.json" ]; then
    timed tumoraug evaluate --data "$W/real_cache32" --model "$W/demo_s2000" \
        --conditions real,pretrain --folds 5 --seeds 0,1,2 --device cpu \
        --out "$W/eval_downstream"
fi
# The same folds and seeds with the topk 0 generator (the shipped demo) as the source; the
# real-only runs are identical to those above, so only the pre-training condition runs.
if [ ! -f "$W/eval_downstream_topk0/results.json" ]; then
    timed tumoraug evaluate --data "$W/real_cache32" --model "$W/gen_topk0" \
        --conditions pretrain --folds 5 --seeds 0,1,2 --device cpu \
        --out "$W/eval_downstream_topk0"
fi
if [ ! -f "$W/eval_downstream_topk0_mixed/results.json" ]; then
    timed tumoraug evaluate --data "$W/real_cache32" --model "$W/gen_topk0" \
        --conditions mixed --folds 5 --seeds 0,1,2 --device cpu \
        --out "$W/eval_downstream_topk0_mixed"
fi

# 3. topk_ratio ablation: MMD x 1e4 and MS-SSIM per grade against the held-out phantoms,
#    for sample seeds 0, 1, 2; the 2000-step run and two reference rows on the same footing.
for s in 0 1 2; do
    if [ ! -f "$W/eval_ablation_seed$s/samples.json" ]; then
        timed tumoraug evaluate-samples --data "$W/real_cache32" --model "$W/gen_topk0" \
            --model "$W/gen_topk0.25" --model "$W/gen_topk0.5" --n 32 --seed "$s" \
            --device cpu --out "$W/eval_ablation_seed$s"
    fi
    if [ ! -f "$W/eval_demo_seed$s/samples.json" ]; then
        timed tumoraug evaluate-samples --data "$W/real_cache32" --model "$W/demo_s2000" \
            --n 32 --seed "$s" --device cpu --out "$W/eval_demo_seed$s"
    fi
    if [ ! -f "$W/eval_references_seed$s/samples.json" ]; then
        timed python scripts/sample_references.py --data "$W/real_cache32" \
            --train-data "$TOKQ/cache32" --tokenizer "$TOK" --n 32 --seed "$s" \
            --out "$W/eval_references_seed$s"
    fi
done
python scripts/aggregate_samples.py "$W"/eval_ablation_seed?/samples.json \
    "$W"/eval_demo_seed?/samples.json "$W"/eval_references_seed?/samples.json

# 4. Diagnostic: train on 100 synthetic ROIs only (or 100 real training phantoms), test on
#    the 100 held-out phantoms.
timed python scripts/synthetic_to_real.py --data "$W/real_cache32" \
    --real-reference "$TOKQ/cache32" --model "$W/demo_s2000" --model "$W/gen_topk0" \
    --model "$W/gen_topk0.25" --model "$W/gen_topk0.5" --n 100 --seeds 0,1,2
