#!/usr/bin/env bash
# The gpu preset's check on one GPU, in ONE device call (about 5-7 minutes on one H200): every run of
# JOBS side by side (one process each) on the selection split of scripts/recipe_ablation.py (no test
# record is read for training or choosing), then the validation table, then the 5-seed ensemble of
# the variant ENSEMBLE and its ONE look at the standard test split (scripts/seed_ensemble.py).
#
#   bash benchmarks/gpu_finetune.sh OUT_DIR [CARRY_DIR] [EPOCHS]    # SMOKE=1: 1 epoch at width 0.25, on CPU
#
# Default plan (prepared in session 10, run in session 12 with SCORE_LIMIT=60: w1-lr-b16 won, its
# ensemble 0.7950 was refused a look, under 0.7930 + 0.01; reports/recipe-ablation-gpu): JOBS =
# seeds 0 and 1 of three changes on the gpu preset (variants w1-lr-* of
# reports/recipe-ablation-gpu/variants.yaml), ENSEMBLE=auto: the variant with the best mean
# validation macro-F1 among them gets seeds 0-4 (the missing ones trained side by side), its
# ensemble, and a test look only through seed_ensemble.py's gate against the
# scored preset ensemble (BASELINE_MODEL, default w1-stem4-lr: its committed validation and score files
# are copied in, so a look needs +0.01 validation macro-F1 over its 0.7930). Session 10 ran
#   JOBS="w1-stem4:0 ... w1-stem4:4 w1-stem4-reg:0 w1-stem4-lr:0" ENSEMBLE=w1-stem4 BASELINE_MODEL= (a first look)
# and then, on the still-warm machine, seeds 1-4 of w1-stem4-lr (reports/recipe-ablation-gpu).
# One call, not two: the device tool gives a machine back 30 s after a call, so runs left in /tmp
# for a second call are fragile.
#
# ENSEMBLE=A+B: a mixed ensemble (seed_ensemble.py --variant A+B: the seeds of A, then those of B), the
# seeds of both trained. INFO_ENSEMBLES="V ...": after the look, each variant's seed ensemble on
# validation only (ensemble-info/ in results.tgz; INFO_LIMIT s each, 40), never a test look.
#
# Time limits (the device tool allows 600 s per command): each training run LIMIT s (300), cut
# further so that the scoring (SCORE_LIMIT s, 120) still ends by DEADLINE s (560) after the start
# (SMOKE: 3600 unless DEADLINE is given). Every 20 s the epochs done per run and the GPU's use go to monitor.txt, so a run
# cut at its limit still says how far it got. What comes back (the tool returns at most 8 files):
# results.tgz (the tables, the ensemble's report files, every run's metrics.csv / results.json /
# config.yaml, partial ones too), logs.txt, monitor.txt, machine.txt.
# Measured on one H200 (session 13, logs-session13-call*.txt): 5 depth-34 runs side by side exited 265 s after the start;
# 10 batch-32 runs (5 of them with a weight EMA) 254-290 s, then the 10-member ensemble's validation
# 23 s. Session 12: 4 batch-32 and 2 batch-16 runs side by side ended 186 s and
# 228-232 s after the call's start (set-up and data loading included); seeds 2-4 of the batch-16
# winner then took 183 s side by side, the ensemble's validation scoring 20 s; the whole call 442 s.
# Session 10: 7 full-width runs side by side ended 181-227 s after the call's
# start (set-up and data loading included), 5 runs 142-152 s; the 5-member ensemble's validation
# and test scoring 18 s. SMOKE=1 SMOKE_JOBS="w1-stem4:0 w1-stem4-reg:0" on 2 CPU cores: 258 s, the
# gate refusing the smoke ensemble's look.
#
# CARRY_DIR (default gpucarry/, git-ignored) holds whl/ (the wfdb wheel, as for gpu_session.sh), cinc/
# (CinC 2017 packed by ../shared/tools/cinc_pack.py), cinc_pack.py itself, and selection-splits.json
# (the split file that scripts/recipe_ablation.py made here, so both machines use the same records).
set -u
OUT=${1:?usage: gpu_finetune.sh OUT_DIR [CARRY_DIR] [EPOCHS]}
CARRY=${2:-gpucarry}
EPOCHS=${3:-30}
T0=$(date +%s)
DEADLINE_GIVEN=${DEADLINE:-}
DEADLINE=${DEADLINE:-560}
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
JOBS=${JOBS:-"w1-lr-drop:0 w1-lr-drop:1 w1-lr-b16:0 w1-lr-b16:1 w1-lr-shift:0 w1-lr-shift:1"}
ENSEMBLE=${ENSEMBLE-auto}
BASELINE_MODEL=${BASELINE_MODEL-w1-stem4-lr}
ENS_SEEDS="0 1 2 3 4"
EXTRA="--set epochs=$EPOCHS"
if [ "${SMOKE:-0}" = 1 ]; then
    EXTRA="--set epochs=1 --set model.width=0.25"
    JOBS=${SMOKE_JOBS:-"w1-stem4:0 w1-stem4-reg:0 w1-stem4-lr:0"}; ENS_SEEDS="0 1"; DEADLINE=${DEADLINE_GIVEN:-3600}  # a DEADLINE given is kept: its cut path can be tried on CPU
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

train() {  # train "variant:seed ..." side by side, each cut at LIMIT s (less if DEADLINE is near); finished runs are skipped
    local n_info=$(echo ${INFO_ENSEMBLES:-} | wc -w)
    local lim=$(( DEADLINE - ${SCORE_LIMIT:-120} - n_info * ${INFO_LIMIT:-40} - 30 - ($(date +%s) - T0) ))
    [ $lim -gt ${LIMIT:-300} ] && lim=${LIMIT:-300}
    [ $lim -lt 30 ] && { echo "no time left to train $1 (DEADLINE $DEADLINE s)"; return; }
    for job in $1; do
        name=${job%%:*}; seed=${job##*:}
        ( OMP_NUM_THREADS=2 timeout $lim $PY scripts/recipe_ablation.py --variants $VARIANTS --only "$name" --seeds "$seed" \
            --data "$REC" --runs "$RUNS" --report "$OUT/work/table-$name-$seed" $EXTRA > "$OUT/work/log-$name-$seed.txt" 2>&1;
          echo "$name seed $seed: exit $? at t=$(( $(date +%s) - T0 )) s" >> "$OUT/work/exits.txt" ) &
    done
    wait $(jobs -p | grep -v "^$MON$")
    $PY scripts/recipe_ablation.py --variants $VARIANTS --seeds 0,1,2,3,4 --data "$REC" --runs "$RUNS" --report "$OUT/work/table" \
        $EXTRA --table-only
}
train "$JOBS"
cat "$OUT/work/exits.txt" 2>/dev/null

if [ "$ENSEMBLE" = auto ]; then  # the best mean validation macro-F1 among the variants of JOBS
    ENSEMBLE=$($PY -c "import csv, statistics as s, collections as c, sys; names = {j.split(':')[0] for j in sys.argv[1].split()}
d = c.defaultdict(list)
for r in csv.DictReader(open('$OUT/work/table/ablation.csv')):
    if r['variant'] in names: d[r['variant']].append(float(r['val_macro_f1']))
print(max(d, key=lambda k: s.mean(d[k])) if d else '')" "$JOBS")
fi
if [ -n "$ENSEMBLE" ]; then
    echo "ensemble of variant $ENSEMBLE (seeds $ENS_SEEDS); t=$(( $(date +%s) - T0 )) s"
    train "$(for v in ${ENSEMBLE//+/ }; do for s in $ENS_SEEDS; do printf '%s:%s ' "$v" "$s"; done; done)"  # A+B: both
    mkdir -p "$OUT/work/ensemble"
    LOOK="--score-test --first-look"
    if [ -n "$BASELINE_MODEL" ]; then  # the scored preset ensemble's files: a further look needs the gate
        if cp reports/recipe-ablation-gpu/test-score-$BASELINE_MODEL.json reports/recipe-ablation-gpu/ensemble-$BASELINE_MODEL-validation.json \
            "$OUT/work/ensemble/"; then
            LOOK="--score-test --baseline $BASELINE_MODEL"
        else  # never a first look in place of the gate: validation only
            echo "baseline $BASELINE_MODEL's scored files are missing: the ensemble is scored on validation only"; LOOK=""
        fi
    fi
    echo "then its test look (${LOOK:-none}); t=$(( $(date +%s) - T0 )) s"
    timeout ${SCORE_LIMIT:-120} $PY scripts/seed_ensemble.py --runs "$RUNS" --variant "$ENSEMBLE" --seeds "$(echo $ENS_SEEDS | tr ' ' ,)" \
        --data "$REC" --report "$OUT/work/ensemble" $LOOK 2>&1 | tail -30
fi
for v in ${INFO_ENSEMBLES:-}; do  # validation only, for information (no test look): a folder of their own
    mkdir -p "$OUT/work/ensemble-info"
    echo "validation-only ensemble of $v; t=$(( $(date +%s) - T0 )) s"
    timeout ${INFO_LIMIT:-40} $PY scripts/seed_ensemble.py --runs "$RUNS" --variant "$v" --seeds "$(echo $ENS_SEEDS | tr ' ' ,)" \
        --data "$REC" --report "$OUT/work/ensemble-info" 2>&1 | tail -12
done
kill $MON 2>/dev/null
# one archive: the tables, the ensemble's report files and every run's metrics, results and config
(cd "$RUNS" && cp -r "$OUT/work/table" "$OUT/work/ensemble" "$OUT/work/ensemble-info" . 2>/dev/null; \
 tar czf "$OUT/results.tgz" table ensemble ensemble-info ensemble-*/ensemble.json */metrics.csv */results.json */config.yaml 2>/dev/null)
for f in "$OUT"/work/log-*.txt; do echo "== $f"; tail -15 "$f"; done > "$OUT/logs.txt"
cat "$OUT/work/exits.txt" >> "$OUT/logs.txt"
rm -rf "$OUT/work"
echo "done at t=$(( $(date +%s) - T0 )) s"
ls -la "$OUT"
