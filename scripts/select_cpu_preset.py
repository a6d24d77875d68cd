"""Choose the CPU fine-tuning preset blind to the test split.

    python scripts/select_cpu_preset.py [--splits runs/pipeline/splits.json]

Rule (fixed before running): keep the test records of ``--splits`` out of everything; carve a
selection split from the other records (80% train / 20% validation, stratified, seed 1); train
each candidate preset on it and pick the one with the higher validation macro-F1 (4 classes).
Writes reports/preset-selection.json. The test split is never scored here.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sklearn.model_selection import train_test_split

from ecgtl.config import FinetuneConfig, load_config
from ecgtl.data.cinc2017 import find_label_file, read_labels
from ecgtl.data.splits import load_splits, save_splits
from ecgtl.train.finetune import run_finetune

CANDIDATES = {
    "crop32s": "reports/finetune-cpu-crop32s/config.yaml",  # 32.8 s crops, no class weights, 40 epochs
    "crop65s": "cpu",  # the current preset: 65.5 s crops, class weights, 30 epochs
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--splits", default="runs/pipeline/splits.json")
    ap.add_argument("--data", default="data/raw/challenge-2017/1.0.0/training2017")
    ap.add_argument("--out", default="runs/preset-selection")
    args = ap.parse_args()
    base = load_splits(args.splits)
    labels = read_labels(find_label_file(args.data))
    pool = sorted(base["train"] + base["val"])
    train, val = train_test_split(pool, test_size=0.2, stratify=[labels[n] for n in pool], random_state=1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # the test list is kept so no test record can enter training; the runs score it, this script ignores it
    save_splits(out / "selection-splits.json", {"train": sorted(train), "val": sorted(val), "test": base["test"]}, seed=1,
                note="selection split: 80/20 of the non-test records")
    result = {}
    for name, preset in CANDIDATES.items():
        cfg = load_config(FinetuneConfig, preset, "finetune", [f"data={args.data}", f"out={out / name}",
                                                                f"splits={out / 'selection-splits.json'}", "bootstrap=0"])
        res = run_finetune(cfg, progress=False)
        result[name] = {"preset": preset, "val_macro_f1": res["val"]["macro_f1"], "best_epoch": res["best_round"]}
    chosen = max(result, key=lambda k: result[k]["val_macro_f1"])
    report = {"rule": "higher validation macro-F1 on the selection split", "candidates": result, "chosen": chosen,
              "selection_val_records": len(val), "selection_train_records": len(train)}
    Path("reports").mkdir(exist_ok=True)
    Path("reports/preset-selection.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
