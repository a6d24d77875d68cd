"""A tiny deterministic training job for the engine tests (also run as a script to be SIGKILLed)."""

from __future__ import annotations

import sys
import time

import torch

from ecgtl.train.engine import Trainer, round_seed


def make_trainer(out, rounds=4, sleep=0.0, seed=0, checkpoint_every=None, ema_decay=0.0, validate=True):
    """``validate=False``: no evaluation and no monitor (a final fit: the last round's weights are kept)."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Dropout(0.3), torch.nn.Linear(16, 3))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.5)
    g = torch.Generator().manual_seed(123)
    X, Y = torch.randn(256, 8, generator=g), torch.randint(0, 3, (256,), generator=g)

    def make_batches(r):
        gen = torch.Generator().manual_seed(round_seed(seed, r))
        perm = torch.randperm(256, generator=gen)
        for i in range(0, 256, 32):
            if sleep:
                time.sleep(sleep)
            idx = perm[i:i + 32]
            yield X[idx], Y[idx]

    def step_fn(m, batch):
        x, y = batch
        return torch.nn.functional.cross_entropy(m(x), y), len(y)

    def evaluate(m, r):
        return {"val_acc": float((m(X).argmax(1) == Y).float().mean())}

    return Trainer(model, opt, step_fn, make_batches, evaluate if validate else None, out, rounds=rounds,
                   monitor="val_acc" if validate else None, patience=1 if not validate else None,
                   scheduler=sched, seed=seed, progress=False, checkpoint_every=checkpoint_every, ema_decay=ema_decay)


if __name__ == "__main__":
    every = int(sys.argv[4]) if len(sys.argv) > 4 else None
    make_trainer(sys.argv[1], rounds=int(sys.argv[2]), sleep=float(sys.argv[3]), checkpoint_every=every).fit()
