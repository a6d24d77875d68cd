"""Model registry and factory (the shape of timm's ``_registry`` / ``_factory``).

A model family registers its constructors with :func:`register_model`; users build
models by name with :func:`create_model` and discover them with :func:`list_models`::

    from ecgtl.models import create_model, backbone_state_dict

    pretext = create_model("resnet18_postact", num_classes=5)   # beat pretext task
    ...                                                          # pre-train
    target = create_model("resnet18_postact", num_classes=4)    # CinC 2017 classes
    target.load_state_dict(backbone_state_dict(pretext), strict=False)

Every registered model follows one interface:

* ``forward_features(x)`` -> pooled feature vector, shape ``(B, num_features)``
* ``forward_head(features)`` -> logits, shape ``(B, num_classes)``
  (``(B, num_features)`` when ``num_classes == 0``)
* ``forward(x)`` == ``forward_head(forward_features(x))``
* ``reset_classifier(num_classes)`` replaces the head (``0`` -> identity, a bare backbone)
* attributes ``num_features``, ``num_classes`` and ``model_name``
* all head parameters live under the state-dict prefix :data:`HEAD_PREFIX`
"""

from __future__ import annotations

import fnmatch
from collections import OrderedDict
from typing import Callable, Mapping

import torch
from torch import nn

from ecgtl.errors import ConfigError

__all__ = [
    "HEAD_PREFIX",
    "backbone_state_dict",
    "create_model",
    "is_model",
    "list_models",
    "register_model",
    "resolve_name",
    "with_current_model_name",
]

#: State-dict prefix of the classification head; everything else is the backbone.
HEAD_PREFIX = "head."

_MODEL_ENTRYPOINTS: dict[str, Callable[..., nn.Module]] = {}
#: Older names -> registered names (model cards and presets written before a rename keep working).
_ALIASES: dict[str, str] = {}


def register_model(fn: Callable[..., nn.Module] | None = None, *, aliases: tuple[str, ...] = ()):
    """Register a model constructor under its function name (decorator), plus optional ``aliases``.

    The constructor must accept ``num_classes``, ``in_chans`` and ``width`` as keyword
    arguments and return a model with the interface described in this module. Use it bare
    (``@register_model``) or with aliases (``@register_model(aliases=("resnet18",))``).
    """
    def register(f: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        for name in (f.__name__, *aliases):
            if name in _MODEL_ENTRYPOINTS or name in _ALIASES:
                raise ValueError(f"model {name!r} is already registered")
        _MODEL_ENTRYPOINTS[f.__name__] = f
        _ALIASES.update({a: f.__name__ for a in aliases})
        return f

    return register if fn is None else register(fn)


def resolve_name(name: str) -> str:
    """The registered name of ``name`` (itself, or what an alias points to); :class:`ConfigError` if unknown."""
    name = _ALIASES.get(name, name)
    if name not in _MODEL_ENTRYPOINTS:
        raise ConfigError(f"unknown model {name!r}; available: {', '.join(list_models())} "
                          f"(older names: {', '.join(sorted(_ALIASES))})")
    return name


def with_current_model_name(config: dict) -> dict:
    """A config dict (``{"model": {"name": ...}}``) with the model named by its registered name, not an alias."""
    name = config.get("model", {}).get("name")
    if name is None or not is_model(name):
        return config
    return {**config, "model": {**config["model"], "name": resolve_name(name)}}


def list_models(pattern: str | None = None, aliases: bool = False) -> list[str]:
    """Registered names, sorted (with ``aliases``: older names too); ``pattern`` is a shell-style filter (``"*preact*"``)."""
    names = sorted([*_MODEL_ENTRYPOINTS, *(_ALIASES if aliases else ())])
    if pattern is not None:
        names = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
    return names


def is_model(name: str) -> bool:
    """Whether ``name`` is a registered model or an alias of one."""
    return name in _MODEL_ENTRYPOINTS or name in _ALIASES


def create_model(
    name: str,
    num_classes: int = 0,
    in_chans: int = 1,
    width: float = 1.0,
    **kwargs,
) -> nn.Module:
    """Build a registered model by name, with freshly initialised weights.

    Args:
        name: a name from :func:`list_models`, e.g. ``"resnet18_postact"`` (the authors'
            post-activation blocks) or ``"resnet18_preact"`` (pre-activation), or an older
            alias (``"resnet18"``, ``"resnet18v2"``). The model's ``model_name`` is the
            registered name.
        num_classes: outputs of the linear head; ``0`` gives an identity head, i.e. a
            backbone whose ``forward`` returns the ``(B, num_features)`` feature vector.
        in_chans: input channels (ECG leads for 1-D models; spectrogram channels for 2-D).
        width: channel multiplier applied to every stage (``1.0`` = the study's widths).
        **kwargs: model-specific options, e.g. ``drop_rate`` or ``kernel_sizes``.

    Raises:
        ConfigError: unknown model name or invalid ``num_classes``/``in_chans``/``width``.
    """
    name = resolve_name(name)
    if int(num_classes) != num_classes or num_classes < 0:
        raise ConfigError(f"num_classes must be an integer >= 0, got {num_classes!r}")
    if int(in_chans) != in_chans or in_chans < 1:
        raise ConfigError(f"in_chans must be an integer >= 1, got {in_chans!r}")
    if not width > 0:
        raise ConfigError(f"width must be > 0, got {width!r}")
    model = _MODEL_ENTRYPOINTS[name](num_classes=int(num_classes), in_chans=int(in_chans), width=float(width), **kwargs)
    model.model_name = name
    return model


def backbone_state_dict(model_or_state_dict: nn.Module | Mapping[str, torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
    """The state dict without the classification head (keys starting with :data:`HEAD_PREFIX`).

    Load it into a model of the same architecture with any head; with ``strict=False``
    only the new head stays at its fresh initialisation::

        missing, unexpected = target.load_state_dict(backbone_state_dict(pretext), strict=False)
        # missing == ["head.weight", "head.bias"], unexpected == []
    """
    if isinstance(model_or_state_dict, nn.Module):
        state_dict = model_or_state_dict.state_dict()
    else:
        state_dict = model_or_state_dict
    return OrderedDict((k, v) for k, v in state_dict.items() if not k.startswith(HEAD_PREFIX))
