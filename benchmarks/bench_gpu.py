"""GPU training-step throughput of the pre-training model, as ratios to eager bf16 in the same run.

    python benchmarks/bench_gpu.py [--arch resnet18_postact] [--batch 512] [--frame 4096]
        [--variants eager_fp32,eager_bf16,eager_bf16_2d,compile_bf16,compile_bf16_2d]
        [--steps 40] [--out reports/bench_gpu.json]

One training step = forward + backward + Adam (the study's betas and eps) on a batch of
``--batch`` frames of ``--frame`` samples, 5 classes (the beat task), the way ``ecgtl pretrain``
steps. Variants:

* ``eager_fp32`` / ``eager_bf16``: plain PyTorch, without / with bf16 autocast;
* ``*_2d``: the 1-D network run as (1, k) 2-D convolutions over channels-last tensors
  (:meth:`ecgtl.models.resnet1d.ResNet.use_conv2d_layout`; same parameters);
* ``compile_*``: ``torch.compile`` (default mode; ``compile_max_*`` = ``max-autotune-no-cudagraphs``);
* ``*_fused``: Adam with ``fused=True``.

Every variant starts from the same initial weights and sees the same batches, so its loss
curve over the first ``--curve`` steps is compared with eager fp32's (numerics: the largest
loss difference, next to eager bf16's, which is rounding noise). Then ``--steps`` steps are
timed (CUDA events around the whole loop). A torch-profiler table of the eager bf16 step and
of the fastest variant gives each kernel family's share of GPU time. FLOPs per frame come
from ``torch.utils.flop_counter`` (forward + backward). Runs on CPU too (tiny sizes, for the
tests), where the figures mean nothing.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F

from ecgtl.models import create_model

ALL_VARIANTS = ("eager_fp32", "eager_bf16", "eager_bf16_fused", "eager_bf16_2d", "compile_bf16", "compile_bf16_2d",
                "compile_bf16_2d_fused", "compile_max_bf16_2d_fused")
DEFAULT_VARIANTS = "eager_fp32,eager_bf16,eager_bf16_fused,eager_bf16_2d,compile_bf16,compile_bf16_2d_fused"
NUM_CLASSES = 5

# kernel name fragments -> family (first match wins), for the profile summary
FAMILIES = (
    ("optimizer", ("adam", "multi_tensor", "foreach", "_amp_", "fused_adam")),
    ("layout transpose", ("nchwtonhwc", "nhwctonchw", "transpose", "permute")),
    ("convolution", ("conv", "xmma", "implicit_gemm", "gemm", "cudnn", "sm90", "sm80", "wgrad", "dgrad", "cutlass")),
    ("batch norm", ("batch_norm", "bn_", "batchnorm", "welford")),
    ("triton fused", ("triton",)),
    ("max pool", ("max_pool", "maxpool")),
    ("elementwise / copy", ("elementwise", "copy", "fill", "relu", "add", "mul", "cast", "vectorized", "reduce")),
)


def family(name: str) -> str:
    low = name.lower()
    for fam, keys in FAMILIES:
        if any(k in low for k in keys):
            return fam
    return "other"


def make_model(arch: str, variant: str, device: torch.device, init_state: dict | None):
    model = create_model(arch, num_classes=NUM_CLASSES).to(device)
    if init_state is not None:
        model.load_state_dict(init_state)
    if "_2d" in variant:
        model.use_conv2d_layout()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.98), eps=1e-9,
                           fused=("fused" in variant and device.type == "cuda"))
    amp = "bf16" in variant and device.type == "cuda"
    run = model
    if variant.startswith("compile_max"):
        run = torch.compile(model, mode="max-autotune-no-cudagraphs")
    elif variant.startswith("compile"):
        run = torch.compile(model)

    def step(x, y):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(run(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    return model, step


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def flops_per_frame(arch: str, frame: int, device: torch.device) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    model = create_model(arch, num_classes=NUM_CLASSES).to(device)
    x = torch.randn(2, 1, frame, device=device)
    with FlopCounterMode(display=False) as fc:
        model(x).sum().backward()
    return fc.get_total_flops() / 2


def profile_step(step, batches, device, n: int = 5) -> dict:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for i in range(n):
            step(*batches[i % len(batches)])
        sync(device)
    rows = []
    for e in prof.key_averages():
        t = getattr(e, "self_device_time_total", None)
        if t is None:
            t = getattr(e, "self_cuda_time_total", 0)
        if device.type != "cuda":
            t = e.self_cpu_time_total
        if t > 0 and (device.type != "cuda" or getattr(e, "device_type", None) is None or "CUDA" in str(e.device_type)):
            rows.append((e.key, float(t)))
    total = sum(t for _, t in rows) or 1.0
    fam = defaultdict(float)
    for k, t in rows:
        fam[family(k)] += t
    rows.sort(key=lambda r: -r[1])
    return {
        "gpu_time_per_step_ms": total / n / 1000,
        "families": {k: round(v / total, 4) for k, v in sorted(fam.items(), key=lambda kv: -kv[1])},
        "top_kernels": [{"name": k[:160], "share": round(t / total, 4), "family": family(k)} for k, t in rows[:12]],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="resnet18_postact")
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--frame", type=int, default=4096)
    p.add_argument("--variants", default=DEFAULT_VARIANTS)
    p.add_argument("--steps", type=int, default=40, help="timed steps per variant")
    p.add_argument("--curve", type=int, default=20, help="steps of the loss curve compared across variants (warm-up too)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--no-profile", action="store_true")
    p.add_argument("--out", default="reports/bench_gpu.json")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in ALL_VARIANTS]
    if unknown:
        p.error(f"unknown variant(s) {unknown}; choose from {', '.join(ALL_VARIANTS)}")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    torch.manual_seed(0)
    init_state = {k: v.clone() for k, v in create_model(args.arch, num_classes=NUM_CLASSES).state_dict().items()}
    g = torch.Generator().manual_seed(1)
    n_batches = 4
    batches = [(torch.randn(args.batch, 1, args.frame, generator=g).to(device),
                torch.randint(0, NUM_CLASSES, (args.batch,), generator=g).to(device)) for _ in range(n_batches)]
    # a learnable signal in the data, so the loss curve moves: class c adds a sine of (c + 1) cycles per frame
    t = torch.arange(args.frame, device=device) / args.frame
    for x, y in batches:
        x[:, 0] += torch.sin(2 * torch.pi * (y[:, None].float() + 1) * t) * 2

    fpf = flops_per_frame(args.arch, args.frame, device)
    results, curves, profiles = {}, {}, {}
    steps_by_variant = {}
    for v in variants:
        torch.manual_seed(0)
        t0 = time.perf_counter()
        model, step = make_model(args.arch, v, device, init_state)
        losses = [float(step(*batches[i % n_batches])) for i in range(args.curve)]
        sync(device)
        warm_s = time.perf_counter() - t0
        curves[v] = losses
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for i in range(args.steps):
                step(*batches[i % n_batches])
            end.record()
            sync(device)
            seconds = start.elapsed_time(end) / 1000
            mem = torch.cuda.max_memory_allocated() / 2**30
            torch.cuda.reset_peak_memory_stats()
        else:
            t1 = time.perf_counter()
            for i in range(args.steps):
                step(*batches[i % n_batches])
            seconds, mem = time.perf_counter() - t1, None
        fps = args.batch * args.steps / seconds
        results[v] = {"frames_per_s": round(fps, 1), "step_ms": round(1000 * seconds / args.steps, 2),
                      "tflops": round(fps * fpf / 1e12, 2), "warmup_and_compile_s": round(warm_s, 1),
                      "peak_memory_gib": None if mem is None else round(mem, 2)}
        steps_by_variant[v] = step
        print(f"{v:28s} {fps:10.0f} frames/s  {results[v]['tflops']:7.1f} TFLOP/s  (warm-up/compile {warm_s:.1f} s)", flush=True)

    base = "eager_bf16" if "eager_bf16" in results else variants[0]
    ref = curves.get("eager_fp32")
    for v, r in results.items():
        r["ratio_to_" + base] = round(r["frames_per_s"] / results[base]["frames_per_s"], 3)
        if ref is not None:
            r["max_abs_loss_diff_vs_eager_fp32"] = round(max(abs(a - b) for a, b in zip(curves[v], ref)), 5)
    best = max(results, key=lambda v: results[v]["frames_per_s"])
    if not args.no_profile:
        for v in dict.fromkeys([base, best]):
            profiles[v] = profile_step(steps_by_variant[v], batches, device)
    peak = 790e12 if device.type == "cuda" and "H200" in torch.cuda.get_device_name() else None
    report = {
        "benchmark": "bench_gpu",
        "command": "python benchmarks/bench_gpu.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "arch": args.arch, "batch": args.batch, "frame_samples": args.frame, "timed_steps": args.steps,
        "gflop_per_frame_fwd_bwd": round(fpf / 1e9, 3),
        "baseline": base, "fastest": best,
        "variants": results,
        "loss_curves": {v: [round(x, 5) for x in c] for v, c in curves.items()},
        "profiles": profiles,
        "share_of_bf16_dense_peak": None if peak is None else {v: round(r["tflops"] * 1e12 / peak, 4) for v, r in results.items()},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"fastest: {best}, {results[best]['ratio_to_' + base]:.2f}x {base}; wrote {out}")
    for v, prof in profiles.items():
        print(f"profile {v}: " + ", ".join(f"{k} {100 * s:.0f}%" for k, s in prof["families"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
