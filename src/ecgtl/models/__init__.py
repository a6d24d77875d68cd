"""Models: 1-D ResNet-18/34/50 (``*_postact``: post-activation as in the authors' code;
``*_preact``: pre-activation, the paper's "v2"), a 2-D ResNet-18 for spectrograms, the
future-prediction model, and the registry/factory that builds them by name.

    >>> from ecgtl.models import create_model, list_models
    >>> model = create_model("resnet18_postact", num_classes=4)      # CinC 2017: N, A, O, ~
    >>> model.num_features
    512
"""

from ecgtl.models import resnet2d as _resnet2d  # noqa: F401  (registers the 2-D models)
from ecgtl.models.registry import (
    HEAD_PREFIX,
    backbone_state_dict,
    create_model,
    is_model,
    list_models,
    register_model,
    resolve_name,
)
from ecgtl.models.resnet1d import CONV_LAYOUTS, ResNet, apply_conv_layout, scale_channels  # registers the 1-D models

__all__ = [
    "CONV_LAYOUTS",
    "HEAD_PREFIX",
    "ResNet",
    "apply_conv_layout",
    "backbone_state_dict",
    "create_model",
    "is_model",
    "list_models",
    "register_model",
    "resolve_name",
    "scale_channels",
]
