#!/usr/bin/env bash
# Fine-tuning recipe screening on one GPU (about 5 minutes on one H200): the variants of
# reports/recipe-ablation-gpu/variants.yaml side by side (one process each), on the selection
# split of scripts/recipe_ablation.py (no test record is read), then the table, and the
# inference benchmark on the real records.
#
#   bash benchmarks/gpu_finetune.sh OUT_DIR [CARRY_DIR] [SEEDS] [EPOCHS]    # SMOKE=1: 1 epoch, 2 variants at width 0.25, CPU
#   ENSEMBLE=auto bash benchmarks/gpu_finetune.sh ...   # then 5 seeds of the best variant, ensembled, test scored once
#   BENCH=0: skip the inference benchmark (already measured: reports/bench_inference_cuda_cinc.json)
#
# Through the device tool (at most 600 s per command, about 15 device-minutes a session) this takes
# two calls on the same warm machine, since the runs stay in RUNS_DIR (/tmp) between them and a
# finished run is skipped: (1) `BENCH=0 bash benchmarks/gpu_finetune.sh $OUT/screen` -- 6 runs side
# by side, each cut at LIMIT (420 s); the issue measured one full-width 250 Hz run alone at 94 s on
# an H200, and the stride-4 and 125 Hz runs do about half its work past the stem; (2) `BENCH=0
# ENSEMBLE=auto bash benchmarks/gpu_finetune.sh $OUT/ens` -- seeds 1-4 of the best variant (seed 0
# is its screening run), the ensemble and the one test look. Untested on a GPU so far.
#
# CARRY_DIR (default gpucarry/) holds whl/ (the wfdb wheel, as for gpu_session.sh), cinc/ (CinC 2017
# packed by ../shared/tools/cinc_pack.py), cinc_pack.py itself, and selection-splits.json (the
# split file that scripts/recipe_ablation.py made here, so both machines use the same records).
set -u
OUT=${1:?usage: gpu_finetune.sh OUT_DIR [CARRY_DIR] [SEEDS] [EPOCHS]}
CARRY=${2:-gpucarry}
SEEDS=${3:-0}
EPOCHS=${4:-30}
source "$(dirname "$0")/gpu_env.sh"
DATA=${CINC_DIR:-/tmp/ecgtl-cinc}
if [ ! -f "$DATA/REFERENCE-v3.csv" ]; then
    $PY "$CARRY/cinc_pack.py" unpack "$CARRY/cinc" "$DATA" || exit 1
fi
REC=$(dirname "$(find "$DATA" -name RECORDS | head -1)")
RUNS=${RUNS_DIR:-/tmp/ecgtl-ra}
mkdir -p "$RUNS"
cp "$CARRY/selection-splits.json" "$RUNS/"
VARIANTS=reports/recipe-ablation-gpu/variants.yaml
NAMES=$($PY -c "import yaml; print(' '.join(yaml.safe_load(open('$VARIANTS'))))")
EXTRA="--set epochs=$EPOCHS"
if [ "${SMOKE:-0}" = 1 ]; then NAMES="w1-stem4 w1-125hz"; EXTRA="--set epochs=1 --set model.width=0.25"; fi
echo "variants: $NAMES; seeds $SEEDS; records in $REC"
for name in $NAMES; do
    ( timeout ${LIMIT:-420} $PY scripts/recipe_ablation.py --variants $VARIANTS --only "$name" --seeds "$SEEDS" \
        --data "$REC" --runs "$RUNS" --report "$OUT/table" $EXTRA > "$OUT/log-$name.txt" 2>&1 ) &
done
wait
$PY scripts/recipe_ablation.py --variants $VARIANTS --seeds "$SEEDS" --data "$REC" --runs "$RUNS" --report "$OUT/table" $EXTRA --table-only
# ENSEMBLE=auto (or a variant name): 5 seeds of the variant with the best validation macro-F1 in the
# table just made, side by side, then scripts/seed_ensemble.py: the ensemble's validation table, its
# ensemble.json (biases if cross-fitting says so) and ONE scoring of the standard test split.
if [ -n "${ENSEMBLE:-}" ]; then
    BEST=$ENSEMBLE
    if [ "$BEST" = auto ]; then
        BEST=$($PY -c "import csv,statistics as s,collections as c; d=c.defaultdict(list)
for r in csv.DictReader(open('$OUT/table/ablation.csv')): d[r['variant']].append(float(r['val_macro_f1']))
print(max(d, key=lambda k: s.mean(d[k])))")
    fi
    echo "ensemble of variant $BEST (seeds 0-4)"
    for seed in 0 1 2 3 4; do
        ( timeout ${LIMIT:-420} $PY scripts/recipe_ablation.py --variants $VARIANTS --only "$BEST" --seeds $seed \
            --data "$REC" --runs "$RUNS" --report "$OUT/table-seed$seed" $EXTRA > "$OUT/log-ens-$seed.txt" 2>&1 ) &
    done
    wait
    timeout 240 $PY scripts/seed_ensemble.py --runs "$RUNS" --variant "$BEST" --data "$REC" --report "$OUT/ensemble" \
        --score-test --first-look 2>&1 | tail -30
fi
# every run's metrics (partial ones too), results and config, in one file
(cd "$RUNS" && tar czf "$OUT/runs.tgz" */metrics.csv */results.json */config.yaml 2>/dev/null)
cat "$OUT"/log-*.txt | tail -40 > "$OUT/logs.txt"; rm -f "$OUT"/log-*.txt
if [ "${BENCH:-1}" = 1 ] && [ -f benchmarks/bench_inference.py ]; then
    timeout 120 $PY benchmarks/bench_inference.py --device ${DEVICE:-cuda} --data "$REC" --out "$OUT/bench_inference_cinc.json" 2>&1 | tail -15
fi
ls -la "$OUT" "$OUT/table"
