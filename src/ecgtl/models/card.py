"""Model cards: weights in ``safetensors`` plus a JSON card that says how to use them.

The card records what a user of the weights must reproduce: architecture, width, input
sampling rate (Hz), normalisation (mean/std in mV), input length, classes, the task and
data it was trained on, seed, steps and the git commit; a fine-tuned model's card also
records its global ``pooling`` (``"mean"``, or ``"masked"``: only the feature steps over
real signal; a card without the field is ``"mean"``), which :func:`model_from_card` sets on
the model for every reader. ``ecgtl finetune --init CARD``,
``ecgtl evaluate``, ``ecgtl predict`` and ``ecgtl export`` all start from a card.

A card vouches for exactly one weights file: it stores the file's SHA-256
(``weights_sha256``) and a digest of its own fields (``card_sha256``).
:func:`load_card_weights` is the one place weights are read through a card: it refuses a
weights file that is not the one the card was written for (corrupted, truncated, another
run's, or rewritten after the card), an edited card, and non-finite tensors, so a damaged
model never answers with a confident class.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import torch
from safetensors.torch import load, save

from ecgtl import __version__
from ecgtl.errors import DataError, EcgtlError
from ecgtl.fileio import atomic_write
from ecgtl.models.registry import HEAD_PREFIX, create_model
from ecgtl.models.resnet1d import POOLINGS as _POOLINGS

CARD_VERSION = 1
_CARD_DIGEST = "card_sha256"
#: What a card without a ``pooling`` field (written before it existed) pools with.
DEFAULT_POOLING = "mean"


def card_pooling(card: dict) -> str:
    """The global pooling of a card's model: its ``pooling`` field, ``"mean"`` for cards without one."""
    return card.get("pooling") or DEFAULT_POOLING


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _card_digest(card: dict) -> str:
    """Digest of a card's own fields (not the digest itself, not the ``_`` paths added on reading)."""
    fields = {k: v for k, v in card.items() if k != _CARD_DIGEST and not k.startswith("_")}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def check_finite(path: str | os.PathLike, state: dict[str, torch.Tensor]) -> None:
    """Refuse weights holding NaN or infinite values (corrupt, or a diverged training)."""
    bad = {k: int((~torch.isfinite(v)).sum()) for k, v in state.items() if v.is_floating_point() or v.is_complex()}
    bad = {k: n for k, n in bad.items() if n}
    if bad:
        names = ", ".join(f"{k} ({n})" for k, n in list(bad.items())[:3])
        raise DataError(path, f"{sum(bad.values())} non-finite (NaN/inf) value(s) in {len(bad)} tensor(s), e.g. {names}: "
                              "the weights are corrupt or their training diverged; restore the file from its run, "
                              "or retrain (e.g. with a lower optim.lr)")


def _parse_weights(path: Path, data: bytes) -> dict[str, torch.Tensor]:
    try:
        return load(data)
    except Exception as exc:  # safetensors raises its own error types on truncated or garbled files
        raise DataError(path, f"unreadable safetensors file ({type(exc).__name__}: {exc}): truncated or corrupt; "
                              "restore it from its run, or rerun the training that wrote it") from None


def _read_bytes(path: Path) -> bytes:
    if not path.is_file():
        raise DataError(path, "weights file not found")
    return path.read_bytes()


def write_card(path: str | os.PathLike, weights: str | os.PathLike, *, expected_sha256: str | None = None,
               **fields) -> dict:
    """Write a card JSON next to (or pointing at) ``weights``; returns the card.

    The card only vouches for weights a reader would accept: a readable file of finite
    tensors. ``expected_sha256`` (e.g. what the training engine recorded when it wrote
    the file) must match the file, so a file replaced in between is refused, not vouched for.
    A ``pooling`` field, where given, must be ``"mean"`` or ``"masked"``.
    """
    path = Path(path)
    weights = Path(weights)
    data = _read_bytes(weights)
    check_finite(weights, _parse_weights(weights, data))
    digest = hashlib.sha256(data).hexdigest()
    if expected_sha256 and digest != expected_sha256:
        raise DataError(weights, f"not the weights this run wrote (sha256 {digest[:12]}..., the run's checkpoint "
                                 f"recorded {expected_sha256[:12]}...): the file was replaced or changed after training; "
                                 "restore it, or delete the run folder and train again")
    card = {"card_version": CARD_VERSION,
            "weights": os.path.relpath(weights, path.parent),
            "weights_sha256": digest,
            "ecgtl_version": __version__, "torch_version": torch.__version__,
            "git_commit": git_commit(), **fields}
    for key in ("architecture", "width", "fs", "normalization"):
        if key not in card:
            raise ValueError(f"model card needs {key!r}")
    if card.get("pooling", DEFAULT_POOLING) not in _POOLINGS:
        raise ValueError(f"model card pooling must be one of {', '.join(_POOLINGS)}, got {card['pooling']!r}")
    card[_CARD_DIGEST] = _card_digest(card)
    atomic_write(path, json.dumps(card, indent=1))
    return card


def read_card(path: str | os.PathLike) -> dict:
    """A card's fields plus ``_weights_path`` and ``_card_path``; refuses a card edited after it was written."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "model card not found")
    try:
        card = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(path, f"not a JSON model card ({exc}); restore it from its run folder") from None
    if not isinstance(card, dict):
        raise DataError(path, "not a JSON model card (expected an object); restore it from its run folder")
    for key in ("weights", "weights_sha256", "architecture", "width", "fs", "normalization"):
        if key not in card:
            raise DataError(path, f"model card lacks {key!r}; write cards with ecgtl.models.card.write_card "
                                  "(or rerun the training that wrote it)")
    # cards of earlier versions have no digest of their own fields: their weights are still checked
    if _CARD_DIGEST in card and card[_CARD_DIGEST] != _card_digest(card):
        raise DataError(path, "the model card was edited after it was written (its fields no longer match its "
                              f"{_CARD_DIGEST}): a changed rate, normalisation or class list would give wrong answers "
                              "silently; restore the card from its run, or write a new one with "
                              "ecgtl.models.card.write_card")
    card["_weights_path"] = str((path.parent / card["weights"]).resolve())
    card["_card_path"] = str(path.resolve())
    return card


def save_weights(state: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
    """Write tensors to a ``.safetensors`` file atomically (no pickle); ``metadata``: strings only.

    Non-finite tensors are refused (a weights file is never written that a reader would refuse).
    """
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    check_finite(path, tensors)
    return atomic_write(path, save(tensors, metadata=metadata))


def load_weights(path: str | os.PathLike, expected_sha256: str | None = None) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file (no pickle involved), all finite.

    ``expected_sha256``, when given, must match the file (e.g. what the training engine
    recorded when it wrote it). Weights that come with a card are read with
    :func:`load_card_weights`, which takes the hash from the card.
    """
    path = Path(path)
    data = _read_bytes(path)
    state = _parse_weights(path, data)
    digest = hashlib.sha256(data).hexdigest()
    if expected_sha256 and digest != expected_sha256:
        raise DataError(path, f"not the weights this run wrote (sha256 {digest[:12]}..., the run's checkpoint recorded "
                              f"{expected_sha256[:12]}...): the file was replaced or changed after training; restore it, "
                              "or delete the run folder and train again")
    check_finite(path, state)
    return state


def load_card_weights(card: dict | str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a card's weights file, after checking that they are the ones the card was written for.

    Refused with a :class:`DataError` naming the weights file: a missing, truncated or
    unreadable file; a file whose SHA-256 differs from the card's ``weights_sha256``
    (corrupted, another run's weights, or rewritten after the card); non-finite tensors.
    """
    if not isinstance(card, dict):
        card = read_card(card)
    path = Path(card["_weights_path"])
    data = _read_bytes(path)
    state = _parse_weights(path, data)
    digest = hashlib.sha256(data).hexdigest()
    if digest != card.get("weights_sha256"):
        raise DataError(path, f"weights do not match their model card {card.get('_card_path')} (sha256 {digest[:12]}..., "
                              f"the card says {str(card.get('weights_sha256'))[:12]}...): the file is corrupted, comes from "
                              "another run, or was rewritten after the card (an interrupted training); restore the run's "
                              "own weights file, or rerun the same training command to finish the run and rewrite the card")
    check_finite(path, state)
    return state


def model_from_card(card: dict | str | os.PathLike, num_classes: int | None = None,
                    reset_head: bool = False) -> tuple[torch.nn.Module, dict]:
    """Build the card's model and load its weights (checked by :func:`load_card_weights`).

    With ``reset_head`` (or ``num_classes`` different from the card's) the head is dropped
    and a new one with ``num_classes`` outputs created: fine-tuning from a pre-trained
    backbone, even when the pretext task happens to have as many classes as the target
    (heart rate and CinC 2017 both have 4). The backbone must load exactly. The model's
    pooling is the card's (:func:`card_pooling`): a ``"masked"`` card gives a model whose
    ``pooling`` is ``"masked"``, for its callers to give it the ``valid`` ranges.
    """
    if not isinstance(card, dict):
        card = read_card(card)
    pooling = card_pooling(card)
    if pooling not in _POOLINGS:
        raise DataError(card.get("_card_path"), f"unknown pooling {pooling!r} (this ecgtl knows {', '.join(_POOLINGS)}): "
                                                "the card was written by a newer ecgtl; update ecgtl")
    state = load_card_weights(card)
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
    if pooling != DEFAULT_POOLING:
        if not callable(getattr(model, "set_pooling", None)):
            raise DataError(card.get("_card_path"), f"pooling={pooling} but {card['architecture']} has no such pooling")
        try:
            model.set_pooling(pooling)
        except EcgtlError as exc:
            raise DataError(card.get("_card_path"), str(exc)) from None
    return model, card
