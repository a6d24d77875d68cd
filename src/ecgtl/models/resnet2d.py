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

import torch
from torch import nn

from ecgtl.models.registry import register_model
from ecgtl.models.resnet1d import ResNet, _fixed_by_name

__all__ = ["LogSpectrogram", "resnet18_postact_2d", "resnet18_postact_2d_stft", "resnet18_preact_2d", "resnet18_preact_2d_stft"]

# STFT of the spectrogram models, in samples of the model's input rate: at 125 Hz a 64-sample
# Hann window is 0.51 s (1.95 Hz bins up to 62.5 Hz) and the hop of 8 samples 64 ms.
STFT_N_FFT, STFT_HOP = 64, 8


class LogSpectrogram(nn.Module):
    """``(B, 1, T)`` ECG -> ``(B, 1, n_fft // 2 + 1, 1 + T // hop)`` log(1 + |STFT|), via ``torch.stft`` on the input's device.

    Computing the spectrogram inside the model keeps every pipeline (pre-training frames,
    fine-tuning crops, sliding windows, ``ecgtl predict``) unchanged: the model takes raw ECG.
    """

    def __init__(self, n_fft: int = STFT_N_FFT, hop_length: int = STFT_HOP):
        super().__init__()
        self.n_fft, self.hop_length = n_fft, hop_length
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[1] != 1:
            raise ValueError(f"expected single-lead ECG of shape (B, 1, T), got {list(x.shape)}")
        spec = torch.stft(x[:, 0].float(), self.n_fft, self.hop_length, window=self.window, center=True, return_complex=True)
        return torch.log1p(spec.abs()).unsqueeze(1)

_KERNEL_SIZES_2D = (3, 3, 3, 3)


@register_model(aliases=("resnet18_2d",))
def resnet18_postact_2d(**kwargs) -> ResNet:
    """2-D ResNet-18 (torchvision-like post-activation basic blocks) for spectrograms ``(B, C, F, T)``."""
    kwargs.setdefault("kernel_sizes", _KERNEL_SIZES_2D)
    return ResNet((2, 2, 2, 2), block="basic", preact=False, spatial_dims=2, **_fixed_by_name("resnet18_postact_2d", kwargs))


@register_model(aliases=("resnet18v2_2d",))
def resnet18_preact_2d(**kwargs) -> ResNet:
    """2-D ResNet-18v2 (pre-activation basic blocks, final BN + ReLU) for spectrograms ``(B, C, F, T)``."""
    kwargs.setdefault("kernel_sizes", _KERNEL_SIZES_2D)
    return ResNet((2, 2, 2, 2), block="basic", preact=True, spatial_dims=2, **_fixed_by_name("resnet18_preact_2d", kwargs))


@register_model(aliases=("resnet18_2d_stft",))
def resnet18_postact_2d_stft(**kwargs) -> ResNet:
    """:func:`resnet18_postact_2d` on a log-magnitude STFT computed from raw ECG ``(B, 1, T)`` (the 2024 extension)."""
    kwargs.setdefault("kernel_sizes", _KERNEL_SIZES_2D)
    return ResNet((2, 2, 2, 2), block="basic", preact=False, spatial_dims=2, input_transform=LogSpectrogram(), **_fixed_by_name("resnet18_postact_2d_stft", kwargs))


@register_model(aliases=("resnet18v2_2d_stft",))
def resnet18_preact_2d_stft(**kwargs) -> ResNet:
    """:func:`resnet18_preact_2d` on a log-magnitude STFT computed from raw ECG ``(B, 1, T)``."""
    kwargs.setdefault("kernel_sizes", _KERNEL_SIZES_2D)
    return ResNet((2, 2, 2, 2), block="basic", preact=True, spatial_dims=2, input_transform=LogSpectrogram(), **_fixed_by_name("resnet18_preact_2d_stft", kwargs))
