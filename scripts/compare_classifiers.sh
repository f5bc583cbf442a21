#!/usr/bin/env bash
# Which classifier `tumoraug evaluate` uses by default (docs/evaluation.md, "Which classifier"):
# the same downstream protocol with tumoraug's ResNet3D and MONAI's resnet10, resnet18 and
# densenet121 -- the low-data regime (24 real training ROIs, 3 HGG : 1 LGG), real only and
# real + synthetic (ratio 1, guidance 1, the demo generator), 5 folds x 2 seeds = 10 paired
# runs per arm, on the 100 held-out phantoms of scripts/run_experiments.sh (no generator saw
# them). One job at a time, one thread; a finished network is skipped on a re-run.
# Usage, inside the project's venv, from the repository root:
#   bash scripts/compare_classifiers.sh [WORK_DIR] [MODEL]   (defaults /tmp/exp10, the demo)
set -euo pipefail
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
W="${1:-/tmp/exp10}"
MODEL="${2:-$(python -c 'from tumoraug.pretrained import demo_model_path; print(demo_model_path())')}"
for net in tumoraug resnet10 resnet18 densenet121; do
    out="$W/eval_classifier_$net"
    [ -f "$out/results.json" ] && continue
    start=$SECONDS
    tumoraug evaluate --data "$W/real_cache32" --model "$MODEL" --classifier "$net" \
        --conditions real,mixed --ratios 1 --guidance-values 1 --train-size 24 --hgg-share 0.75 \
        --folds 5 --seeds 0,1 --device cpu --out "$out"
    echo "[$((SECONDS - start)) s] $net" | tee -a "$W/times.log"
done
