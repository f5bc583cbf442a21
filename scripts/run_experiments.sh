#!/usr/bin/env bash
# The issue-10 experiments of docs/results.md, on CPU, on 32³ phantom ROIs:
#   0. small32 tokenizers on the same 100 training ROIs (phantom seed 0): the paper's
#      importance, 4000 steps at a constant learning rate and 4500 steps with a cosine decay;
#      then on 400 (300 more phantoms, seed 3; the same held-out ROIs): the 26 dB tokenizer,
#      the same with 1024 codes of 16 dimensions, and the recipe at 64³;
#   1. stage-2 transformers on the 4000-step tokenizer, identical except topk_ratio 0 / 0.25 /
#      0.5 (hybrid masking on the MaskGIT budget: the arms corrupt the same number of tokens),
#      the 0.25 arm continued to 3000 steps with held-out scoring (40 phantoms, seed 2), and
#      the paper's 3D-VQGAN baseline (`--baseline`: one network per grade, MaskGIT masking);
#   2. the minority grade: the 0.25 recipe on a 60 HGG : 20 LGG subset, with and without the
#      grade-balanced loss;
#   3. stage 2 on the 26 dB tokenizer (400 training phantoms) beside the demo;
#   4. MMD x 1e4, MS-SSIM and intensity statistics per grade, sample seeds 0, 1, 2, against
#      100 held-out phantoms (seed 1) that no model saw; the downstream sweeps of `evaluate`.
# The gate-importance arms of docs/results.md ran at commit bb537bf, the last with the gate:
# scripts/tokenizer_quality.py --importance gate (4000 steps), then train_demo_model.py on
# that tokenizer with --topk-ratio 0 / 0.25 --validation, as for the arms below.
# Usage, inside the project's venv (python and tumoraug on PATH), from the repository root:
#   bash scripts/run_experiments.sh [WORK_DIR]   (default /tmp/exp10)
# Every step is skipped when its output exists, and every training run resumes from its last
# checkpoint, so the script can be stopped and started again. It runs one job at a time;
# docs/results.md ran two at a time on the two cores.
set -euo pipefail
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
W="${1:-/tmp/exp10}"
TOKQ="${TOKQ:-/tmp/tokq2}"
TOK="$TOKQ/run_small32_s4000/tokenizer"
mkdir -p "$W"

timed() {
    local start=$SECONDS
    "$@"
    echo "[$((SECONDS - start)) s] $*" | tee -a "$W/times.log"
}

# Data: 120 training phantoms (seed 0, 64³) -> 32³ ROIs (the tokenizer holds 20 of them out);
# 100 held-out phantoms (seed 1) for every evaluation; 40 (seed 2) to score stage 2 while it
# trains; a 60 HGG : 20 LGG subset of the training phantoms.
if [ ! -f "$W/real_cache32/manifest.json" ]; then
    timed tumoraug phantom "$W/real_phantoms" --per-class 50 --seed 1 --shape 64 64 64
    timed tumoraug preprocess "$W/real_phantoms" "$W/real_cache32" --size 32
fi
if [ ! -f "$W/val_cache32/manifest.json" ]; then
    timed tumoraug phantom "$W/val_phantoms" --per-class 20 --seed 2 --shape 64 64 64
    timed tumoraug preprocess "$W/val_phantoms" "$W/val_cache32" --size 32
fi

# 0. Tokenizers (stage 1).
[ -f "$TOKQ/run_small32_s4000/quality.json" ] || timed python scripts/tokenizer_quality.py \
    --work "$TOKQ" --preset small32 --steps 4000 --batch-size 4 --lr 5e-4
[ -f "$TOKQ/run_small32_s4500_cosine/quality.json" ] || timed python scripts/tokenizer_quality.py \
    --work "$TOKQ" --preset small32 --steps 4500 --batch-size 4 --lr 5e-4 --lr-schedule cosine
# the 26 dB tokenizer: 300 more training phantoms (seed 3), the same held-out ROIs; with a
# larger codebook; and the same recipe at 64³ (batch 2, the steps that fit half an hour)
TOK26="$TOKQ/run_small32_s3500_extra150/tokenizer"
[ -f "$TOKQ/run_small32_s3500_extra150/quality.json" ] || timed python scripts/tokenizer_quality.py \
    --work "$TOKQ" --preset small32 --steps 3500 --batch-size 4 --extra-phantoms 150 \
    --eval-cache "$W/real_cache32"
[ -f "$TOKQ/run_small32_s3500_codebook_size1024_embed_dim16_extra150/quality.json" ] || timed \
    python scripts/tokenizer_quality.py --work "$TOKQ" --preset small32 --steps 3500 \
    --batch-size 4 --extra-phantoms 150 --eval-cache "$W/real_cache32" \
    --set codebook_size=1024 --set embed_dim=16
[ -f "$W/real_cache64/manifest.json" ] || timed tumoraug preprocess "$W/real_phantoms" \
    "$W/real_cache64" --size 64
[ -f "$TOKQ/run_small32_roi64_s300_extra150/quality.json" ] || timed python \
    scripts/tokenizer_quality.py --work "$TOKQ" --preset small32 --roi-size 64 --steps 300 \
    --batch-size 2 --extra-phantoms 150 --eval-cache "$W/real_cache64"

# 1. Transformers: same tokenizer, data, seed and schedule; only the masking differs.
for k in 0 0.25 0.5; do
    [ -f "$W/classifier_topk$k/train_summary.json" ] || timed python scripts/train_demo_model.py \
        --tokenizer "$TOK" --data "$TOKQ/cache32" --out "$W/classifier_topk$k" --topk-ratio "$k" \
        --steps 1500 --batch-size 16
done
timed python scripts/corruption_histogram.py "$W/classifier_topk0/corpus.safetensors" \
    --ratios 0,0.25,0.5 --steps 1500 --out "$W/corrupted_fraction.png"
for s in 0 1 2; do
    [ -f "$W/eval_ablation_seed$s/samples.json" ] || timed tumoraug evaluate-samples \
        --data "$W/real_cache32" --model "$W/classifier_topk0" --model "$W/classifier_topk0.25" \
        --model "$W/classifier_topk0.5" --n 32 --seed "$s" --device cpu --out "$W/eval_ablation_seed$s"
done
cp -rn "$W/classifier_topk0.25" "$W/demo_v2"  # the 1500-step arm, shipped as the demo
for k in 0 0.25; do
    [ -f "$W/eval_downstream_topk$k/results.json" ] || timed tumoraug evaluate \
        --data "$W/real_cache32" --model "$W/classifier_topk$k" \
        --conditions real,mixed,pretrain,balance,synthetic_only --ratios 1,5 --train-size 24 \
        --hgg-share 0.75 --folds 5 --seeds 0,1,2 --device cpu --out "$W/eval_downstream_topk$k"
done
[ -f "$W/eval_guidance/results.json" ] || timed tumoraug evaluate --data "$W/real_cache32" \
    --model "$W/demo_v2" --conditions real,mixed,synthetic_only --ratios 5 --guidance-values 1,3 \
    --train-size 24 --hgg-share 0.75 --folds 5 --seeds 0,1,2 --device cpu --out "$W/eval_guidance"
for g in 1 3; do for s in 0 1 2; do
    [ -f "$W/eval_guidance${g}_seed$s/samples.json" ] || timed tumoraug evaluate-samples \
        --data "$W/real_cache32" --model "$W/demo_v2" --guidance "$g" --n 32 --seed "$s" \
        --device cpu --out "$W/eval_guidance${g}_seed$s"
done; done
timed python scripts/train_demo_model.py --tokenizer "$TOK" --data "$TOKQ/cache32" \
    --out "$W/classifier_topk0.25" --topk-ratio 0.25 --steps 3000 --batch-size 16 \
    --validation "$W/val_cache32"
[ -f "$W/classifier_baseline/tumoraug.json" ] || timed tumoraug train-transformer \
    --tokenizer "$TOK" --data "$TOKQ/cache32" --out "$W/classifier_baseline" \
    --config "$W/classifier_topk0.25/transformer_config.json" --baseline --steps 1500 \
    --batch-size 16 --lr 0.001 --warmup 50 --device cpu --seed 0 --checkpoint-every 200 \
    --validation "$W/val_cache32"
[ -f "$W/eval_downstream_baseline/results.json" ] || timed tumoraug evaluate \
    --data "$W/real_cache32" --model "$W/classifier_baseline" \
    --conditions real,mixed,pretrain,synthetic_only --ratios 5 --train-size 24 --hgg-share 0.75 \
    --folds 5 --seeds 0,1,2 --device cpu --out "$W/eval_downstream_baseline"
for s in 0 1 2; do
    [ -f "$W/eval_s3000_seed$s/samples.json" ] || timed tumoraug evaluate-samples \
        --data "$W/real_cache32" --model "$W/classifier_baseline" --model "$W/classifier_topk0.25" \
        --n 32 --seed "$s" --device cpu --out "$W/eval_s3000_seed$s"
done

# 2. The minority grade.
if [ ! -f "$W/imb_cache32/manifest.json" ]; then
    mkdir -p "$W/imb_phantoms/HGG" "$W/imb_phantoms/LGG"
    for i in $(seq -f "%03g" 0 59); do
        ln -sfn "$TOKQ/phantoms/HGG/Phantom_HGG_$i" "$W/imb_phantoms/HGG/Phantom_HGG_$i"
    done
    for i in $(seq -f "%03g" 0 19); do
        ln -sfn "$TOKQ/phantoms/LGG/Phantom_LGG_$i" "$W/imb_phantoms/LGG/Phantom_LGG_$i"
    done
    timed tumoraug preprocess "$W/imb_phantoms" "$W/imb_cache32" --size 32
fi
for arm in balanced plain; do
    extra=()
    [ "$arm" = plain ] && extra=(--no-balance)
    [ -f "$W/imb_$arm/train_summary.json" ] || timed python scripts/train_demo_model.py \
        --tokenizer "$TOK" --data "$W/imb_cache32" --out "$W/imb_$arm" --topk-ratio 0.25 \
        --steps 1000 --batch-size 16 --validation "$W/val_cache32" "${extra[@]}"
done
for s in 0 1 2; do
    [ -f "$W/eval_imb_seed$s/samples.json" ] || timed tumoraug evaluate-samples \
        --data "$W/real_cache32" --model "$W/imb_balanced" --model "$W/imb_plain" --n 32 \
        --seed "$s" --device cpu --out "$W/eval_imb_seed$s"
done

# 3. Stage 2 on the 26 dB tokenizer, the demo's recipe, beside the demo (same data and seed).
[ -f "$W/v3_topk0.25/train_summary.json" ] || timed python scripts/train_demo_model.py \
    --tokenizer "$TOK26" --data "$TOKQ/cache32" --out "$W/v3_topk0.25" --topk-ratio 0.25 \
    --steps 1500 --batch-size 16 --validation "$W/val_cache32"
for s in 0 1 2; do
    [ -f "$W/eval_v3_seed$s/samples.json" ] || timed tumoraug evaluate-samples \
        --data "$W/real_cache32" --model "$W/demo_v2" --model "$W/v3_topk0.25" --n 32 \
        --seed "$s" --device cpu --out "$W/eval_v3_seed$s"
done

python scripts/aggregate_samples.py "$W"/eval_ablation_seed?/samples.json
python scripts/plot_training_curves.py "$W"/classifier_topk* "$W/classifier_baseline" \
    --metric accuracy --out "$W/stage2_accuracy.png"
