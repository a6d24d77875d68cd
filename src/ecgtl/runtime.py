"""Where a run executes: the device, and the plain module behind DDP / ``torch.compile`` wrappers.

A neutral module below training and evaluation, so both use the same helpers without
importing each other.
"""

from __future__ import annotations

import torch


def resolve_device(name: str = "auto") -> torch.device:
    """``"auto"``: the first CUDA GPU if there is one, else the CPU; any other name as ``torch.device`` reads it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module behind DDP / torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)
