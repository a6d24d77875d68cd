"""Model cards: weights in ``safetensors`` plus a JSON card that says how to use them.

The card records what a user of the weights must reproduce: architecture, width, input
sampling rate (Hz), normalisation (mean/std in mV), input length, classes, the task and
data it was trained on, seed, steps and the git commit. ``ecgtl finetune --init CARD``,
``ecgtl evaluate``, ``ecgtl predict`` and ``ecgtl export`` all start from a card.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from ecgtl import __version__
from ecgtl.errors import DataError
from ecgtl.fileio import atomic_write
from ecgtl.models.registry import HEAD_PREFIX, create_model

CARD_VERSION = 1


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def write_card(path: str | os.PathLike, weights: str | os.PathLike, **fields) -> dict:
    """Write a card JSON next to (or pointing at) ``weights``; returns the card."""
    path = Path(path)
    weights = Path(weights)
    card = {"card_version": CARD_VERSION,
            "weights": os.path.relpath(weights, path.parent),
            "weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
            "ecgtl_version": __version__, "torch_version": torch.__version__,
            "git_commit": git_commit(), **fields}
    for key in ("architecture", "width", "fs", "normalization"):
        if key not in card:
            raise ValueError(f"model card needs {key!r}")
    atomic_write(path, json.dumps(card, indent=1))
    return card


def read_card(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "model card not found")
    try:
        card = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(path, f"not a JSON model card ({exc})") from None
    for key in ("weights", "architecture", "width", "fs", "normalization"):
        if key not in card:
            raise DataError(path, f"model card lacks {key!r}")
    card["_weights_path"] = str((path.parent / card["weights"]).resolve())
    card["_card_path"] = str(path.resolve())
    return card


def save_weights(state: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
    """Write tensors to a ``.safetensors`` file atomically (no pickle); ``metadata``: strings only."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    return atomic_write(path, save(tensors, metadata=metadata))


def load_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file (no pickle involved)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "weights file not found")
    try:
        return load_file(str(path))
    except Exception as exc:
        raise DataError(path, f"unreadable safetensors file ({type(exc).__name__}: {exc})") from None


def model_from_card(card: dict | str | os.PathLike, num_classes: int | None = None,
                    reset_head: bool = False) -> tuple[torch.nn.Module, dict]:
    """Build the card's model and load its weights.

    With ``reset_head`` (or ``num_classes`` different from the card's) the head is dropped
    and a new one with ``num_classes`` outputs created: fine-tuning from a pre-trained
    backbone, even when the pretext task happens to have as many classes as the target
    (heart rate and CinC 2017 both have 4). The backbone must load exactly.
    """
    if not isinstance(card, dict):
        card = read_card(card)
    state = load_weights(card["_weights_path"])
    card_classes = int(card.get("num_classes", 0))
    want = card_classes if num_classes is None else num_classes
    model = create_model(card["architecture"], num_classes=want, width=card["width"],
                         **({"in_chans": card["in_chans"]} if "in_chans" in card else {}))
    if reset_head or want != card_classes or card_classes == 0:
        state = {k: v for k, v in state.items() if not k.startswith(HEAD_PREFIX)}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or any(not k.startswith(HEAD_PREFIX) for k in missing):
            raise DataError(card["_weights_path"], f"weights do not fit {card['architecture']} width {card['width']}: "
                                                   f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    else:
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise DataError(card["_weights_path"], f"weights do not fit the card's model: {exc}") from None
    return model, card
