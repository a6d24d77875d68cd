#!/usr/bin/env bash
# The gpu preset's check on one GPU, in ONE device call (about 5-7 minutes on one H200): every run of
# JOBS side by side (one process each) on the selection split of scripts/recipe_ablation.py (no test
# record is read for training or choosing), then the validation table, then the 5-seed ensemble of
# the variant ENSEMBLE and its ONE look at the standard test split (scripts/seed_ensemble.py).
#
#   bash benchmarks/gpu_finetune.sh OUT_DIR [CARRY_DIR] [EPOCHS]    # SMOKE=1: 1 epoch at width 0.25, 3 runs, on CPU
#
# Plan, fixed before the call (session 10): JOBS = the gpu preset (variant w1-stem4 of
# reports/recipe-ablation-gpu/variants.yaml: src/ecgtl/configs/finetune-gpu.yaml) with seeds 0-4, and
# seed 0 of two screening variants (w1-stem4-reg, w1-stem4-lr) for the validation table only;
# ENSEMBLE = w1-stem4, whatever the screening says (a screening variant that beats it on validation
# earns its own seeds in a later call, not this call's test look). One call, not two: the device
# tool gives a machine back 30 s after a call, so runs left in /tmp for a second call are fragile.
#
# Time limits (the device tool allows 600 s per command): each training run LIMIT s (380), the
# ensemble and test scoring SCORE_LIMIT s (120). Every 20 s the epochs done per run and the GPU's
# use go to monitor.txt, so a run cut at its limit still says how far it got. What comes back (the
# tool returns at most 8 files): results.tgz (the table, the ensemble's report files, every run's
# metrics.csv / results.json / config.yaml, partial ones too), logs.txt, monitor.txt, machine.txt.
#
# CARRY_DIR (default gpucarry/, git-ignored) holds whl/ (the wfdb wheel, as for gpu_session.sh), cinc/
# (CinC 2017 packed by ../shared/tools/cinc_pack.py), cinc_pack.py itself, and selection-splits.json
# (the split file that scripts/recipe_ablation.py made here, so both machines use the same records).
set -u
OUT=${1:?usage: gpu_finetune.sh OUT_DIR [CARRY_DIR] [EPOCHS]}
CARRY=${2:-gpucarry}
EPOCHS=${3:-30}
T0=$(date +%s)
source "$(dirname "$0")/gpu_env.sh"
(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1; $PY -c "import torch; print('torch', torch.__version__)"; nproc) > "$OUT/machine.txt" 2>&1
DATA=${CINC_DIR:-/tmp/ecgtl-cinc}
if [ ! -f "$DATA/REFERENCE-v3.csv" ] && [ -z "$(find "$DATA" -name REFERENCE-v3.csv 2>/dev/null | head -1)" ]; then
    $PY "$CARRY/cinc_pack.py" unpack "$CARRY/cinc" "$DATA" || exit 1
fi
REC=$(dirname "$(find "$DATA" -name RECORDS | head -1)")
RUNS=${RUNS_DIR:-/tmp/ecgtl-ra}
mkdir -p "$RUNS" "$OUT/work"
cp "$CARRY/selection-splits.json" "$RUNS/"
VARIANTS=${VARIANTS:-reports/recipe-ablation-gpu/variants.yaml}
JOBS=${JOBS:-"w1-stem4:0 w1-stem4:1 w1-stem4:2 w1-stem4:3 w1-stem4:4 w1-stem4-reg:0 w1-stem4-lr:0"}
ENSEMBLE=${ENSEMBLE-w1-stem4}
EXTRA="--set epochs=$EPOCHS"
if [ "${SMOKE:-0}" = 1 ]; then
    EXTRA="--set epochs=1 --set model.width=0.25"
    JOBS=${SMOKE_JOBS:-"w1-stem4:0 w1-stem4:1 w1-stem4-reg:0"}
fi
echo "jobs: $JOBS; ensemble: ${ENSEMBLE:-none}; records in $REC; set-up $(( $(date +%s) - T0 )) s"

monitor() {  # epochs done per run (rows of metrics.csv) and the GPU's use, every 20 s
    while true; do
        line="t=$(( $(date +%s) - T0 ))s"
        for d in "$RUNS"/*-seed*/; do
            [ -d "$d" ] || continue
            n=$(( $(cat "$d/metrics.csv" 2>/dev/null | wc -l) - 1 )); [ $n -lt 0 ] && n=0
            line="$line $(basename "$d")=$n"
        done
        gpu=$(nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader 2>/dev/null | tr -d ' ')
        echo "$line gpu=${gpu:-none}" >> "$OUT/monitor.txt"
        sleep 20
    done
}
monitor & MON=$!

for job in $JOBS; do
    name=${job%%:*}; seed=${job##*:}
    ( OMP_NUM_THREADS=2 timeout ${LIMIT:-380} $PY scripts/recipe_ablation.py --variants $VARIANTS --only "$name" --seeds "$seed" \
        --data "$REC" --runs "$RUNS" --report "$OUT/work/table-$name-$seed" $EXTRA > "$OUT/work/log-$name-$seed.txt" 2>&1;
      echo "$name seed $seed: exit $? at t=$(( $(date +%s) - T0 )) s" >> "$OUT/work/exits.txt" ) &
done
wait $(jobs -p | grep -v "^$MON$")
cat "$OUT/work/exits.txt"
$PY scripts/recipe_ablation.py --variants $VARIANTS --seeds 0,1,2,3,4 --data "$REC" --runs "$RUNS" --report "$OUT/work/table" \
    $EXTRA --table-only

if [ -n "$ENSEMBLE" ]; then
    SEEDS=0,1,2,3,4; [ "${SMOKE:-0}" = 1 ] && SEEDS=0,1
    echo "ensemble of variant $ENSEMBLE (seeds $SEEDS), then its one look at the test split; t=$(( $(date +%s) - T0 )) s"
    timeout ${SCORE_LIMIT:-120} $PY scripts/seed_ensemble.py --runs "$RUNS" --variant "$ENSEMBLE" --seeds $SEEDS --data "$REC" \
        --report "$OUT/work/ensemble" --score-test --first-look 2>&1 | tail -30
fi
kill $MON 2>/dev/null
# one archive: the tables, the ensemble's report files and every run's metrics, results and config
(cd "$RUNS" && cp -r "$OUT/work/table" "$OUT/work/ensemble" . 2>/dev/null; \
 tar czf "$OUT/results.tgz" table ensemble ensemble-*/ensemble.json */metrics.csv */results.json */config.yaml 2>/dev/null)
for f in "$OUT"/work/log-*.txt; do echo "== $f"; tail -15 "$f"; done > "$OUT/logs.txt"
cat "$OUT/work/exits.txt" >> "$OUT/logs.txt"
rm -rf "$OUT/work"
echo "done at t=$(( $(date +%s) - T0 )) s"
ls -la "$OUT"
