"""Models: 1-D ResNet-18/34/50 (post-activation as in the authors' code, and pre-activation v2),
a 2-D ResNet-18 for spectrograms, and the registry/factory that builds them by name.

    >>> from ecgtl.models import create_model, list_models
    >>> model = create_model("resnet18", num_classes=4)      # CinC 2017: N, A, O, ~
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
)
from ecgtl.models.resnet1d import ResNet, scale_channels  # registers the 1-D models

__all__ = [
    "HEAD_PREFIX",
    "ResNet",
    "backbone_state_dict",
    "create_model",
    "is_model",
    "list_models",
    "register_model",
    "scale_channels",
]
