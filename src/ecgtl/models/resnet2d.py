"""2-D ResNet-18 for ECG spectrograms (the STFT extension of the 2024 reproduction).

Input ``(B, in_chans, F, T)``: ``F`` frequency bins, ``T`` STFT frames (see the STFT
transform in ``ecgtl.data.transforms`` for their units). torchvision-style layout: stem
conv 7x7 stride 2 (64w) + BN + ReLU + max-pool 3x3 stride 2, four stages of basic blocks
with 3x3 kernels and 64/128/256/512 (times ``width``) filters, stride 2 at the first
block of stages 2-4, 1x1 conv + BN projection shortcuts, global average pooling over
frequency and time, then the head. Each spatial size ``S`` ends as ``ceil(S / 32)``.

Same interface as the 1-D models (:class:`ecgtl.models.resnet1d.ResNet`, reused here with
``spatial_dims=2``): ``forward_features`` -> ``(B, num_features)``, ``forward_head``,
``reset_classifier``, ``num_features``, head parameters under ``head.``.
"""

from __future__ import annotations

from ecgtl.models.registry import register_model
from ecgtl.models.resnet1d import ResNet

__all__ = ["resnet18_2d", "resnet18v2_2d"]

_KERNEL_SIZES_2D = (3, 3, 3, 3)


@register_model
def resnet18_2d(**kwargs) -> ResNet:
    """2-D ResNet-18 (torchvision-like post-activation basic blocks) for spectrograms ``(B, C, F, T)``."""
    kwargs.setdefault("kernel_sizes", _KERNEL_SIZES_2D)
    return ResNet((2, 2, 2, 2), block="basic", preact=False, spatial_dims=2, **kwargs)


@register_model
def resnet18v2_2d(**kwargs) -> ResNet:
    """2-D ResNet-18v2 (pre-activation basic blocks, final BN + ReLU) for spectrograms ``(B, C, F, T)``."""
    kwargs.setdefault("kernel_sizes", _KERNEL_SIZES_2D)
    return ResNet((2, 2, 2, 2), block="basic", preact=True, spatial_dims=2, **kwargs)
