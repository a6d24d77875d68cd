#!/usr/bin/env bash
# The GPU checks of the performance issue in one run (about 6 minutes on one H200), for a lent
# GPU machine that has torch but not this package's other wheels and none of ../shared.
#
#   bash benchmarks/gpu_session.sh OUT_DIR [CARRY_DIR]        # SMOKE=1: tiny sizes, for a CPU try
#
# CARRY_DIR (default gpucarry/, git-ignored) holds what the run needs beside the checkout:
#   whl/wfdb-4.3.1-py3-none-any.whl        pip download wfdb==4.3.1 --no-deps -d gpucarry/whl
#   store1/                                 a one-patient store, Icentia11k patient 0's first 8 segments
#                                           (python benchmarks/virtual_store.py gpucarry/store1 --patients 1
#                                            --segments 8 && rm -rf gpucarry/store1/.base)
# Steps, each with its own time limit so one failure leaves the others' results:
#   1. benchmarks/bench_gpu.py: training-step variants of ResNet-18 (eager, channels-last 2-D
#      layout, torch.compile, fused Adam), loss curves against eager fp32, profiles -> bench_gpu.json
#   2. a 2,000-patient virtual store (hard links; the scale itself is benchmarks/bench_data.py --virtual's
#      job), then `ecgtl pretrain --preset paper` (256 frames per patient and round) with 8 loader
#      workers and the fast path, 3 rounds: frames/s and data_wait_share per round -> pretrain_metrics.csv
#   3. benchmarks/bench_inference.py on the GPU -> bench_inference.json
set -u
OUT=${1:?usage: gpu_session.sh OUT_DIR [CARRY_DIR]}
CARRY=${2:-gpucarry}
source "$(dirname "$0")/gpu_env.sh"
(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; $PY -c "import torch; print('torch', torch.__version__)"; nproc) > "$OUT/machine.txt" 2>&1

if [ "${SMOKE:-0}" = 1 ]; then
    BENCH="--batch 4 --frame 512 --steps 2 --curve 2 --variants eager_fp32,eager_bf16,eager_bf16_2d"
    PATIENTS=40; PRE="--set frames_per_patient=4 --set batch_size=16 --set num_workers=2 --set model.width=0.125 --set frame_samples=1024 --set rounds=2"
    INFER="--records 64 --device cpu"
else
    BENCH=""
    PATIENTS=2000; PRE="--set num_workers=8 --set compile=true --set rounds=3"
    INFER="--records 5000 --device cuda"
fi

echo "== 1. training step"
timeout 330 $PY benchmarks/bench_gpu.py $BENCH --out "$OUT/bench_gpu.json" 2>&1 | grep -v "^USDT" | tee "$OUT/bench_gpu.log"

echo "== 2. end-to-end pre-training on $PATIENTS virtual patients"
$PY benchmarks/virtual_store.py /tmp/ecgtl-vstore --patients $PATIENTS --store "$CARRY/store1"
rm -rf /tmp/ecgtl-pt
timeout 240 $PY -m ecgtl pretrain --preset paper --store /tmp/ecgtl-vstore --out /tmp/ecgtl-pt --no-progress $PRE \
    --set val_frames_per_patient=1 --set conv_layout=2d --set checkpoint_every=null 2>&1 | tee "$OUT/pretrain.log"
cp /tmp/ecgtl-pt/metrics.csv "$OUT/pretrain_metrics.csv"

echo "== 3. inference"
if [ -f benchmarks/bench_inference.py ]; then
    timeout 150 $PY benchmarks/bench_inference.py $INFER --out "$OUT/bench_inference.json" 2>&1 | tail -20
fi
ls -la "$OUT"
