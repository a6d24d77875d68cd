"""Pre-training throughput: frames/s of a training step per architecture and frame size, next to
the frames/s the sampler delivers from a real store, so the ratio says whether data loading keeps up.

    python benchmarks/bench_train.py [--store data/store] [--device cpu] [--widths 1.0,0.25]
        [--archs resnet18_preact,resnet34_preact,resnet50_preact] [--frames 512,2048,4096] [--steps 3]

Build the store first (``make pipeline`` or ``ecgtl pipeline --until cinc``). Writes
benchmarks/results/bench_train.json. Each row also gives its step time relative to the first of
``--archs`` at the same width and frame size, measured in the same run (list an arch twice,
interleaved, to see the run-to-run spread).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ecgtl.data.sampling import FrameSampler, split_patients
from ecgtl.data.store import Store
from ecgtl.models import create_model


def model_frames_per_s(arch: str, width: float, frame: int, batch: int, steps: int, device: torch.device, amp: bool) -> float:
    model = create_model(arch, num_classes=5, width=width).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(batch, 1, frame, device=device)
    y = torch.randint(0, 5, (batch,), device=device)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - t)


def sampler_frames_per_s(store: str, frame: int, n: int = 4096) -> float:
    ids = Store(store).patient_ids
    train, _ = split_patients(ids, 0.05)
    sampler = FrameSampler(store, train, frame, frames_per_patient=max(1, n // len(train) + 1), task="beat", seed=0,
                           normalization=(0.0, 0.2))
    t = time.perf_counter()
    count = sum(1 for _ in sampler)
    return count / (time.perf_counter() - t)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", default="data/store")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--archs", default="resnet18_preact,resnet34_preact,resnet50_preact")
    ap.add_argument("--widths", default="1.0,0.25")
    ap.add_argument("--frames", default="512,2048,4096")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results/bench_train.json")
    args = ap.parse_args()
    device = torch.device(args.device)
    amp = device.type == "cuda"
    res = {"device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
           "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "python": sys.version.split()[0],
           "platform": platform.platform(), "batch": args.batch, "bf16_autocast": amp, "rows": []}
    have_store = (Path(args.store) / "manifest.json").is_file()
    if not have_store:
        print(f"no store at {args.store}: sampler throughput skipped (run `ecgtl pipeline --until cinc`)")
    archs = args.archs.split(",")
    for frame in (int(f) for f in args.frames.split(",")):
        data = sampler_frames_per_s(args.store, frame) if have_store else None
        for width in (float(w) for w in args.widths.split(",")):
            first = None  # frames/s of the first arch listed, at this width and frame: the others' step times are relative to it
            for arch in archs:
                fps = model_frames_per_s(arch, width, frame, args.batch, args.steps, device, amp)
                first = fps if first is None else first
                row = {"arch": arch, "width": width, "frame_samples": frame, "train_frames_per_s": fps,
                       "step_time_to_first_arch_ratio": first / fps,
                       "sampler_frames_per_s": data, "sampler_to_train_ratio": data / fps if data else None}
                res["rows"].append(row)
                ratio = f", sampler {data:,.0f}/s = {data / fps:,.0f}x the model" if data else ""
                print(f"{arch:11s} width {width:<4} frame {frame:5d}: {fps:8.1f} frames/s, "
                      f"{first / fps:.3f}x the step time of {archs[0]}{ratio}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
