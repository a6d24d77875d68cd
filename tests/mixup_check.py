"""Test helper shared by the second-target tests (prior labels, distillation): one training step under masked pooling
and mixup, and the logits of the same mixed batch recomputed by hand."""

from __future__ import annotations

import torch

from ecgtl.train.finetune import mixup_pairs


def step_and_mixed_logits(trainer, model, batch, alpha: float, seed: int = 5):
    """``(loss, n, logits, lam, perm)``: the trainer's step on ``batch`` (crop, label, valid, second target) with mixup
    drawn from ``seed``, and the model's logits of the batch mixed by the same draw, the valid ranges merged."""
    x, _, valid, _ = batch
    torch.manual_seed(seed)
    loss, n = trainer.step_fn(model, batch)
    torch.manual_seed(seed)  # the same mixing draw
    lam, perm = mixup_pairs(len(x), alpha)
    xm = lam * x + (1 - lam) * x[perm]
    vm = torch.stack([torch.minimum(valid[:, 0], valid[perm, 0]), torch.maximum(valid[:, 1], valid[perm, 1])], 1)
    with torch.no_grad():
        logits = model(xm, vm).float()
    return loss, n, logits, lam, perm
