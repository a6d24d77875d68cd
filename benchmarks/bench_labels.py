"""Label rules of the pretext tasks: frames labelled per second, vectorised over many frames vs one call per frame.

    python benchmarks/bench_labels.py [--frames 100000] [--beats 300000] [--out benchmarks/results/bench_labels.json]

Synthetic beats (300,000 beats with random types and rhythms, RR 150-350 samples at
250 Hz), frames of 2,048 samples. The per-frame figure is the same label function called
once per frame, which is what a sampler that labels frame by frame would pay; the ratio
is measured side by side in one run.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from ecgtl.tasks import beat_label, heart_rate_label, rhythm_label


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=100_000)
    ap.add_argument("--beats", type=int, default=300_000)
    ap.add_argument("--per-frame", type=int, default=2_000, help="frames labelled one call at a time")
    ap.add_argument("--out", default="benchmarks/results/bench_labels.json")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    pos = np.cumsum(rng.integers(150, 350, args.beats)).astype(np.int64)
    cls = rng.integers(0, 5, len(pos)).astype(np.uint8)
    rh = rng.integers(0, 6, len(pos)).astype(np.uint8)
    starts = rng.integers(0, int(pos[-1]) - 2048, args.frames)
    rules = {"beat": lambda s: beat_label(pos, cls, s, 2048), "rhythm": lambda s: rhythm_label(pos, rh, s, 2048, 250),
             "heart_rate": lambda s: heart_rate_label(pos, s, 2048, 250)}
    results = {}
    for name, rule in rules.items():
        t0 = time.perf_counter()
        vectorised = rule(starts)
        t_vec = time.perf_counter() - t0
        few = starts[: args.per_frame]
        t0 = time.perf_counter()
        one_by_one = np.array([rule(few[i:i + 1])[0] for i in range(len(few))])
        t_one = time.perf_counter() - t0
        assert np.array_equal(one_by_one, vectorised[: len(few)])
        results[name] = {"frames_per_s_vectorised": args.frames / t_vec, "frames_per_s_per_frame": len(few) / t_one,
                         "ratio": (args.frames / t_vec) / (len(few) / t_one)}
        print(f"{name:>10}: {results[name]['frames_per_s_vectorised']:,.0f} frames/s vectorised, "
              f"{results[name]['frames_per_s_per_frame']:,.0f} one call per frame ({results[name]['ratio']:.0f}x)")
    doc = {"benchmark": "bench_labels", "machine": platform.platform(), "processor": platform.processor(),
           "frames": args.frames, "beats": args.beats, "frame_samples": 2048, "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=1))
    return doc


if __name__ == "__main__":
    main()
