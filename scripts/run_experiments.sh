#!/usr/bin/env bash
# The issue-10 experiments of docs/results.md, on CPU, on 32³ phantom ROIs:
#   0. two `small32` tokenizers on the same 100 training ROIs (phantom seed 0): the paper's
#      importance (`classifier`) and tumoraug's earlier gate (`gate`), 4000 steps each;
#   1. stage-2 transformers on each tokenizer, identical except topk_ratio 0 / 0.25 / 0.5
#      (hybrid masking on the MaskGIT budget: the arms corrupt the same number of tokens);
#   2. MMD x 1e4, MS-SSIM and intensity statistics per grade for every arm, sample seeds
#      0, 1, 2, against 100 held-out phantoms (seed 1) that no model saw.
# Usage, inside the project's venv (python and tumoraug on PATH), from the repository root:
#   bash scripts/run_experiments.sh [WORK_DIR]   (default /tmp/exp10)
# Every step is skipped when its output exists, and every training run resumes from its last
# checkpoint, so the script can be stopped and started again. Run two copies with
# STAGE2_ONLY=classifier / gate to use both cores for step 1.
set -euo pipefail
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
W="${1:-/tmp/exp10}"
TOKQ="${TOKQ:-/tmp/tokq2}"
STEPS2="${STEPS2:-2000}"
mkdir -p "$W"

timed() {
    local start=$SECONDS
    "$@"
    echo "[$((SECONDS - start)) s] $*" | tee -a "$W/times.log"
}

# 0. Tokenizers (stage 1): 120 phantoms (seed 0, 64³) -> 32³ ROIs; 100 train, 20 held out.
for importance in classifier gate; do
    if [ ! -f "$TOKQ/run_small32_${importance}_s4000/quality.json" ]; then
        timed python scripts/tokenizer_quality.py --work "$TOKQ" --preset small32 \
            --importance "$importance" --steps 4000 --batch-size 4 --lr 5e-4
    fi
done

# 1. Transformers: same tokenizer, data, seed and schedule; only topk_ratio differs.
for importance in ${STAGE2_ONLY:-classifier gate}; do
    tok="$TOKQ/run_small32_${importance}_s4000/tokenizer"
    for k in 0 0.25 0.5; do
        out="$W/${importance}_topk$k"
        if [ ! -f "$out/train_summary.json" ]; then
            timed python scripts/train_demo_model.py --tokenizer "$tok" --data "$TOKQ/cache32" \
                --out "$out" --topk-ratio "$k" --steps "$STEPS2" --batch-size 16
        fi
    done
done
[ -n "${STAGE2_ONLY:-}" ] && exit 0

# 2. Held-out phantoms (another seed: no subject seen in training), then the sample metrics.
if [ ! -f "$W/real_cache32/manifest.json" ]; then
    timed tumoraug phantom "$W/real_phantoms" --per-class 50 --seed 1 --shape 64 64 64
    timed tumoraug preprocess "$W/real_phantoms" "$W/real_cache32" --size 32
fi
for s in 0 1 2; do
    if [ ! -f "$W/eval_ablation_seed$s/samples.json" ]; then
        models=()
        for importance in classifier gate; do
            for k in 0 0.25 0.5; do models+=(--model "$W/${importance}_topk$k"); done
        done
        timed tumoraug evaluate-samples --data "$W/real_cache32" "${models[@]}" --n 32 \
            --seed "$s" --device cpu --out "$W/eval_ablation_seed$s"
    fi
done
python scripts/aggregate_samples.py "$W"/eval_ablation_seed?/samples.json
