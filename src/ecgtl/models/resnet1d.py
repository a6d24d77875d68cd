"""1-D residual networks for single- or multi-lead ECG (Weimann & Conrad 2021, "ResNet-18/34/50v2").

Input ``(B, in_chans, T)``: ``T`` in samples (250 Hz in the study: 512-4,096 samples for
pre-training frames, 16,384 for a CinC 2017 record). The network is fully convolutional
and ends with global average pooling, so any ``T >= 1`` works; every stride-2 layer maps
``T -> ceil(T / 2)``, so the last feature map has ``ceil(T / 32)`` time steps (``ceil(T / 64)`` for
``resnet18_preact_stem4``, ``resnet34_preact_stem4`` and ``resnet18_preact_stem4_antialiased``, whose stem
has stride 4: ``feature_stride``).

Layout (``w`` = width multiplier, channels ``max(8, round(c * w))``, see :func:`scale_channels`)::

    stem    conv k7 s2 (64w; s4 in resnet*_preact_stem4) [+ BN + ReLU, post-act only] -> max-pool 3 s2
    stage1  64w  kernel 7  stride 1
    stage2  128w kernel 5  stride 2 (first block)
    stage3  256w kernel 5  stride 2 (first block)
    stage4  512w kernel 3  stride 2 (first block)
    [BN + ReLU, pre-act only] -> global average pool -> dropout -> head (Linear)

``resnet*_antialiased`` (``anti_alias=True``) run every strided layer above at stride 1 and then, per
factor of 2 of its stride, a ``[1, 2, 1] / 4`` low-pass and a stride of 2 (:class:`BlurPool`, Zhang
2019); the same weights and lengths.

Global pooling (``pooling``): ``"mean"`` averages every time step of the last feature map, the
zero padding of a short input included; ``"masked"`` averages only the steps over real signal,
given per input as the sample range ``valid = (start, end)`` (see :func:`valid_feature_steps`);
``"max"`` takes each feature's largest value over every step (a short noise burst or a run of
irregular beats is not averaged away by the rest of a long record).

Blocks: basic (two k-convs) 2-2-2-2 for ResNet-18, 3-4-6-3 for ResNet-34; bottleneck
(1x1, k-conv with the stride, 1x1 with expansion 4) 3-4-6-3 for ResNet-50. Padding ``k // 2``
("same" for odd k), no conv bias anywhere, 1x1 projection shortcut where the shape changes.

Two block styles are registered (``preact`` decides), named for what they are; the older
names stay as aliases (``resnet18`` = ``resnet18_postact``, ``resnet18v2`` = ``resnet18_preact``):

* ``resnet18_postact`` / ``resnet34_postact`` / ``resnet50_postact`` -- **post-activation** blocks (conv-BN-ReLU,
  conv-BN, add, ReLU; projection shortcut = 1x1 conv + BN), exactly the blocks of the
  authors' TensorFlow code (``transplant/modules/resnet1d.py``), which produced the paper's
  "ResNet-18v2" results. Use these to reproduce the study.
* ``resnet18_preact`` / ``resnet34_preact`` / ``resnet50_preact`` -- **pre-activation** blocks (He et al.
  2016, "Identity mappings in deep residual networks"; BN-ReLU-conv, projection shortcut =
  1x1 conv on the pre-activated input, no BN), a bare conv stem, and a final BN + ReLU after
  the last stage, as the paper's name "v2" says.

The 2-D spectrogram model (:mod:`ecgtl.models.resnet2d`) reuses :class:`ResNet` with
``spatial_dims=2``.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ecgtl.constants import POOLINGS  # mean, masked, max (re-exported here)
from ecgtl.errors import ConfigError
from ecgtl.models.registry import register_model

__all__ = [
    "BLUR_TAPS",
    "BasicBlock",
    "BlurPool",
    "Bottleneck",
    "PreActBasicBlock",
    "PreActBottleneck",
    "CONV_LAYOUTS",
    "POOLINGS",
    "ResNet",
    "apply_conv_layout",
    "masked_mean",
    "resnet18_postact",
    "resnet18_preact",
    "resnet18_preact_antialiased",
    "resnet18_preact_stem4",
    "resnet18_preact_stem4_antialiased",
    "resnet34_postact",
    "resnet34_preact",
    "resnet34_preact_stem4",
    "resnet50_postact",
    "resnet50_preact",
    "scale_channels",
    "valid_feature_steps",
]

STAGE_CHANNELS = (64, 128, 256, 512)
STEM_CHANNELS = 64
#: Kernel sizes (samples) of stages 1-4 in the study; the authors' class default is 3-3-3-3.
PAPER_KERNEL_SIZES = (7, 5, 5, 3)
MIN_CHANNELS = 8

_CONV = {1: nn.Conv1d, 2: nn.Conv2d}
_NORM = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d}
_MAX_POOL = {1: nn.MaxPool1d, 2: nn.MaxPool2d}


def scale_channels(channels: int, width: float) -> int:
    """Channels of a layer at width multiplier ``width``: ``max(8, round(channels * width))``.

    The floor of 8 keeps very thin models trainable (width 0.25 -> 16/32/64/128 per stage;
    width 0.0625 -> 8/8/16/32).
    """
    return max(MIN_CHANNELS, int(round(channels * width)))


def valid_feature_steps(valid: torch.Tensor, steps: int, stride: int) -> torch.Tensor:
    """Which time steps of a feature map lie on real signal: ``(B, steps)`` bool.

    ``valid`` ``(B, 2)`` (integers): per input, the sample range ``[start, end)`` of real
    signal (``start`` = zero-padded samples in front, ``end`` = input length minus those at the
    end). Step ``j`` of a map of stride ``stride`` is centred on input sample ``stride * j``
    (every strided layer here has an odd kernel with padding ``k // 2``, so output ``i`` of a
    stride-``s`` layer is centred on input ``s * i``); a step counts when its centre lies in ``[start, end)``, and
    at least one step always counts (where no centre does, the one nearest to the range's
    middle). An input without padding (``valid = (0, T)``) counts all ``ceil(T / stride)`` steps.
    Traceable (no Python branch on values): exported to ONNX with dynamic length.
    """
    if not torch.jit.is_tracing() and (valid.dim() != 2 or valid.shape[1] != 2):
        raise ValueError(f"valid must be (B, 2) sample ranges [start, end), got shape {list(valid.shape)}")
    centres = torch.arange(steps, device=valid.device, dtype=torch.int64) * stride  # (steps,)
    valid = valid.to(torch.int64)
    start, end = valid[:, 0:1], valid[:, 1:2]
    mask = (centres >= start) & (centres < end)
    nearest = (2 * centres - (start + end)).abs().argmin(dim=1, keepdim=True)  # |centre - middle|, x2 to stay integer
    fallback = (torch.arange(steps, device=valid.device, dtype=torch.int64) == nearest) & ~mask.any(dim=1, keepdim=True)
    return mask | fallback


def masked_mean(maps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``maps`` ``(B, C, T)`` over the steps where ``mask`` ``(B, T)`` is True: ``(B, C)``."""
    w = mask.to(maps.dtype).unsqueeze(1)
    return (maps * w).sum(dim=-1) / w.sum(dim=-1)


def _conv(spatial_dims: int, in_chs: int, out_chs: int, kernel_size: int, stride: int = 1) -> nn.Module:
    # padding k // 2 is "same" for odd k at stride 1 and gives ceil(T / 2) at stride 2
    # (TensorFlow's "same" has the same output length but pads the extra sample on the right).
    return _CONV[spatial_dims](in_chs, out_chs, kernel_size, stride=stride, padding=kernel_size // 2, bias=False)


#: Taps of the binomial low-pass filter an anti-aliased network applies before each stride-2
#: subsampling (Zhang 2019, "Making convolutional networks shift-invariant again": filter size 3).
BLUR_TAPS = (0.25, 0.5, 0.25)


class BlurPool(nn.Module):
    """Low-pass, then keep every second step: a fixed ``[1, 2, 1] / 4`` filter per channel, stride 2.

    The anti-aliased subsampling of Zhang (2019): a strided conv or max-pool keeps every second
    output of a map that holds frequencies above the new Nyquist rate, so shifting the input by one
    sample can change the output a lot; filtering first removes most of them. Shape
    ``(B, C, T) -> (B, C, ceil(T / 2))`` (1-D, T in steps), ``(B, C, F, T) -> (B, C, ceil(F / 2),
    ceil(T / 2))`` (2-D, a separable ``[1, 2, 1]`` filter on both axes); a 1-D network run in the
    (1, k) conv2d layout gives ``(B, C, 1, T)``, filtered along T only. Zero padding of 1, so output
    ``i`` is centred on input ``2 i``, as for the odd-kernel strided layers it replaces
    (:func:`valid_feature_steps` holds). Zero padding where Zhang's code reflects: the first output
    step (and the last, for an odd length) sees one zero, so it passes 3/4 of a constant there, as
    the zero-padded convs around it do. No parameters; the filter is a non-persistent buffer, so
    the state dict has the same keys as without it.
    """

    def __init__(self, channels: int, spatial_dims: int = 1):
        super().__init__()
        if spatial_dims not in _CONV:
            raise ValueError(f"spatial_dims must be 1 or 2, got {spatial_dims!r}")
        taps = torch.tensor(BLUR_TAPS, dtype=torch.float32)
        kernel = taps if spatial_dims == 1 else torch.outer(taps, taps)
        self.channels = channels
        self.spatial_dims = spatial_dims
        self.register_buffer("kernel", kernel.expand(channels, 1, *kernel.shape).clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel = self.kernel.to(x.dtype)
        if self.spatial_dims == 2:
            return F.conv2d(x, kernel, stride=2, padding=1, groups=self.channels)
        if x.dim() == 4:  # a 1-D network in the conv2d layout: (B, C, 1, T)
            return F.conv2d(x, kernel.unsqueeze(2), stride=(1, 2), padding=(0, 1), groups=self.channels)
        return F.conv1d(x, kernel, stride=2, padding=1, groups=self.channels)

    def extra_repr(self) -> str:
        return f"{self.channels}, taps={BLUR_TAPS}, stride=2"


def _blur_if_strided(anti_alias: bool, stride: int, channels: int, spatial_dims: int) -> nn.Module:
    """A :class:`BlurPool` where an anti-aliased block subsamples (its main path or its shortcut), else the identity."""
    return BlurPool(channels, spatial_dims) if anti_alias and stride > 1 else nn.Identity()


class BasicBlock(nn.Module):
    """Post-activation basic block: conv-BN-ReLU, conv-BN, add shortcut, ReLU.

    Shape ``(B, in_chs, T) -> (B, channels, ceil(T / stride))``. The shortcut is a 1x1 conv + BN
    when the channels or the stride change, else the identity. ``anti_alias`` with ``stride`` 2:
    ``conv1`` at stride 1, a :class:`BlurPool` after its BN + ReLU, and one before the shortcut's conv.
    """

    expansion = 1

    def __init__(self, in_chs: int, channels: int, kernel_size: int, stride: int = 1, spatial_dims: int = 1,
                 anti_alias: bool = False):
        super().__init__()
        out_chs = channels * self.expansion
        norm = _NORM[spatial_dims]
        conv_stride = 1 if anti_alias else stride  # anti-aliased: the blur subsamples instead
        self.conv1 = _conv(spatial_dims, in_chs, channels, kernel_size, conv_stride)
        self.bn1 = norm(channels)
        self.blur = _blur_if_strided(anti_alias, stride, channels, spatial_dims)
        self.conv2 = _conv(spatial_dims, channels, out_chs, kernel_size)
        self.bn2 = norm(out_chs)
        self.act = nn.ReLU(inplace=True)
        self.has_projection = in_chs != out_chs or stride > 1
        self.downsample = (
            nn.Sequential(OrderedDict(blur=_blur_if_strided(anti_alias, stride, in_chs, spatial_dims),
                                      conv=_conv(spatial_dims, in_chs, out_chs, 1, conv_stride), bn=norm(out_chs)))
            if self.has_projection
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.downsample(x)
        x = self.blur(self.act(self.bn1(self.conv1(x))))
        x = self.bn2(self.conv2(x))
        return self.act(x + shortcut)


class Bottleneck(nn.Module):
    """Post-activation bottleneck: 1x1 conv, k-conv (with the stride), 1x1 conv to ``4 * channels``.

    Shape ``(B, in_chs, T) -> (B, 4 * channels, ceil(T / stride))``; BN after each conv, ReLU
    after the first two and after the addition; shortcut as in :class:`BasicBlock`. ``anti_alias``
    with ``stride`` 2: ``conv2`` at stride 1, a :class:`BlurPool` after its BN + ReLU.
    """

    expansion = 4

    def __init__(self, in_chs: int, channels: int, kernel_size: int, stride: int = 1, spatial_dims: int = 1,
                 anti_alias: bool = False):
        super().__init__()
        out_chs = channels * self.expansion
        norm = _NORM[spatial_dims]
        conv_stride = 1 if anti_alias else stride  # anti-aliased: the blur subsamples instead
        self.conv1 = _conv(spatial_dims, in_chs, channels, 1)
        self.bn1 = norm(channels)
        self.conv2 = _conv(spatial_dims, channels, channels, kernel_size, conv_stride)
        self.bn2 = norm(channels)
        self.blur = _blur_if_strided(anti_alias, stride, channels, spatial_dims)
        self.conv3 = _conv(spatial_dims, channels, out_chs, 1)
        self.bn3 = norm(out_chs)
        self.act = nn.ReLU(inplace=True)
        self.has_projection = in_chs != out_chs or stride > 1
        self.downsample = (
            nn.Sequential(OrderedDict(blur=_blur_if_strided(anti_alias, stride, in_chs, spatial_dims),
                                      conv=_conv(spatial_dims, in_chs, out_chs, 1, conv_stride), bn=norm(out_chs)))
            if self.has_projection
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.downsample(x)
        x = self.act(self.bn1(self.conv1(x)))
        x = self.blur(self.act(self.bn2(self.conv2(x))))
        x = self.bn3(self.conv3(x))
        return self.act(x + shortcut)


class PreActBasicBlock(nn.Module):
    """Pre-activation basic block (He et al. 2016): BN-ReLU-conv, BN-ReLU-conv, add shortcut.

    Shape ``(B, in_chs, T) -> (B, channels, ceil(T / stride))``. Where the shape changes, the
    shortcut is a 1x1 conv (no BN) applied to the pre-activated input, as in ResNetV2.
    ``anti_alias`` with ``stride`` 2: ``conv1`` at stride 1, a :class:`BlurPool` after ``bn2`` + ReLU
    (before ``conv2``), and one on the shortcut's input.
    """

    expansion = 1

    def __init__(self, in_chs: int, channels: int, kernel_size: int, stride: int = 1, spatial_dims: int = 1,
                 anti_alias: bool = False):
        super().__init__()
        out_chs = channels * self.expansion
        norm = _NORM[spatial_dims]
        conv_stride = 1 if anti_alias else stride  # anti-aliased: the blur subsamples instead
        self.bn1 = norm(in_chs)
        self.conv1 = _conv(spatial_dims, in_chs, channels, kernel_size, conv_stride)
        self.bn2 = norm(channels)
        self.blur = _blur_if_strided(anti_alias, stride, channels, spatial_dims)
        self.conv2 = _conv(spatial_dims, channels, out_chs, kernel_size)
        self.act = nn.ReLU(inplace=True)  # acts on BN outputs only, never on the shortcut x
        self.has_projection = in_chs != out_chs or stride > 1
        self.shortcut_blur = _blur_if_strided(anti_alias, stride, in_chs, spatial_dims)
        self.downsample = _conv(spatial_dims, in_chs, out_chs, 1, conv_stride) if self.has_projection else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_preact = self.act(self.bn1(x))
        shortcut = self.downsample(self.shortcut_blur(x_preact)) if self.has_projection else x
        x = self.conv1(x_preact)
        x = self.conv2(self.blur(self.act(self.bn2(x))))
        return x + shortcut


class PreActBottleneck(nn.Module):
    """Pre-activation bottleneck: BN-ReLU-1x1, BN-ReLU-k-conv (with the stride), BN-ReLU-1x1 (x4).

    Shape ``(B, in_chs, T) -> (B, 4 * channels, ceil(T / stride))``; shortcut as in
    :class:`PreActBasicBlock`. ``anti_alias`` with ``stride`` 2: ``conv2`` at stride 1, a
    :class:`BlurPool` after ``bn3`` + ReLU (before ``conv3``).
    """

    expansion = 4

    def __init__(self, in_chs: int, channels: int, kernel_size: int, stride: int = 1, spatial_dims: int = 1,
                 anti_alias: bool = False):
        super().__init__()
        out_chs = channels * self.expansion
        norm = _NORM[spatial_dims]
        conv_stride = 1 if anti_alias else stride  # anti-aliased: the blur subsamples instead
        self.bn1 = norm(in_chs)
        self.conv1 = _conv(spatial_dims, in_chs, channels, 1)
        self.bn2 = norm(channels)
        self.conv2 = _conv(spatial_dims, channels, channels, kernel_size, conv_stride)
        self.bn3 = norm(channels)
        self.blur = _blur_if_strided(anti_alias, stride, channels, spatial_dims)
        self.conv3 = _conv(spatial_dims, channels, out_chs, 1)
        self.act = nn.ReLU(inplace=True)
        self.has_projection = in_chs != out_chs or stride > 1
        self.shortcut_blur = _blur_if_strided(anti_alias, stride, in_chs, spatial_dims)
        self.downsample = _conv(spatial_dims, in_chs, out_chs, 1, conv_stride) if self.has_projection else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_preact = self.act(self.bn1(x))
        shortcut = self.downsample(self.shortcut_blur(x_preact)) if self.has_projection else x
        x = self.conv1(x_preact)
        x = self.conv2(self.act(self.bn2(x)))
        x = self.conv3(self.blur(self.act(self.bn3(x))))
        return x + shortcut


class _Conv1dAs2d(nn.Conv1d):
    """A Conv1d run as a ``(1, k)`` Conv2d over ``(B, C, 1, T)`` channels-last input (same parameters)."""

    def _conv_forward(self, x, weight, bias):
        w = weight.unsqueeze(2).contiguous(memory_format=torch.channels_last)
        return F.conv2d(x, w, bias, (1, self.stride[0]), (0, self.padding[0]), (1, self.dilation[0]), self.groups)


class _BatchNorm1dAs2d(nn.BatchNorm1d):
    """A BatchNorm1d that also takes ``(B, C, 1, T)`` (batch norm is per channel whatever the layout)."""

    def _check_input_dim(self, x):
        if x.dim() not in (2, 3, 4):
            raise ValueError(f"expected 2-D, 3-D or 4-D input (got {x.dim()}-D input)")


class _MaxPool1dAs2d(nn.MaxPool1d):
    """A MaxPool1d run as a ``(1, k)`` MaxPool2d over ``(B, C, 1, T)``."""

    def forward(self, x):
        return F.max_pool2d(x, (1, self.kernel_size), (1, self.stride), (0, self.padding), (1, self.dilation), self.ceil_mode)


_AS_2D = {nn.Conv1d: _Conv1dAs2d, nn.BatchNorm1d: _BatchNorm1dAs2d, nn.MaxPool1d: _MaxPool1dAs2d}


_BLOCKS = {
    ("basic", False): BasicBlock,
    ("bottleneck", False): Bottleneck,
    ("basic", True): PreActBasicBlock,
    ("bottleneck", True): PreActBottleneck,
}


class ResNet(nn.Module):
    """Residual network over 1-D signals (``spatial_dims=1``) or 2-D spectrograms (``spatial_dims=2``).

    Args:
        layers: residual blocks per stage, e.g. ``(2, 2, 2, 2)`` for ResNet-18.
        block: ``"basic"`` or ``"bottleneck"`` (expansion 4).
        preact: ``True`` for pre-activation (v2) blocks, ``False`` for the authors'
            post-activation blocks; see the module docstring for the differences.
        kernel_sizes: kernel size per stage (samples for 1-D; square kernels for 2-D). Odd only.
        num_classes: outputs of the head; ``0`` -> identity head (a backbone).
        in_chans: input channels (ECG leads, or spectrogram channels).
        width: channel multiplier for the stem and all stages (see :func:`scale_channels`).
        drop_rate: dropout probability on the pooled features, before the head.
        spatial_dims: 1 for input ``(B, C, T)``, 2 for input ``(B, C, F, T)``.
        stem_kernel_size: kernel of the stem conv.
        stem_stride: stride of the stem conv: 2 (the study), or 4 for a total stride of 64, e.g.
            at 250 Hz the receptive field in seconds of the stride-2 model at 125 Hz.
        pooling: ``"mean"``, ``"masked"`` (1-D only) or ``"max"``, see :meth:`set_pooling`.
        anti_alias: subsample through :class:`BlurPool` (Zhang 2019): every strided conv runs at
            stride 1 and is followed (after its BN + ReLU where the block has one) by the low-pass
            and a stride of 2, the stem's max-pool runs at stride 1 before one, and each projection
            shortcut's 1x1 conv reads a low-passed input. The same parameters, state-dict keys,
            output lengths and ``feature_stride``. The stem conv and the strided conv of the first
            block of stages 2-4 (``conv1`` of a basic block, ``conv2`` of a bottleneck) compute every
            step: ResNet-18v2 trains with 1.12x the FLOPs of the plain net on 8,192-sample inputs at
            width 0.25 and 1 (``torch.utils.flop_counter``; ``tests/test_models.py`` holds the figure).

    Attributes:
        num_features: length of the pooled feature vector (``scale_channels(512, width)``,
            times 4 for bottleneck blocks).
        num_classes: current number of head outputs (0 for a backbone).
        feature_stride: input samples per time step of the last feature map (32 for four stages
            and a stride-2 stem, 64 with ``stem_stride=4``).
        pooling: the global pooling the model was trained with (``"mean"``, ``"masked"`` or ``"max"``);
            callers give ``valid`` to :meth:`forward` when it is ``"masked"``. Not a parameter:
            the state dict is the same either way (model cards record it).

    State-dict layout: ``stem.*``, ``stages.<stage>.<block>.*``, ``final_norm.*`` (pre-act only)
    and ``head.*`` (:data:`ecgtl.models.registry.HEAD_PREFIX`); drop ``head.*`` to keep the backbone.
    """

    def __init__(
        self,
        layers: Sequence[int],
        block: str = "basic",
        preact: bool = False,
        kernel_sizes: Sequence[int] = PAPER_KERNEL_SIZES,
        num_classes: int = 0,
        in_chans: int = 1,
        width: float = 1.0,
        drop_rate: float = 0.0,
        spatial_dims: int = 1,
        stem_kernel_size: int = 7,
        stem_stride: int = 2,
        input_transform: nn.Module | None = None,
        pooling: str = "mean",
        anti_alias: bool = False,
    ):
        super().__init__()
        # e.g. a spectrogram computed on the device: the model still takes raw ECG (B, C, T)
        self.input_transform = input_transform
        if (block, bool(preact)) not in _BLOCKS:
            raise ValueError(f"block must be 'basic' or 'bottleneck', got {block!r}")
        if spatial_dims not in _CONV:
            raise ValueError(f"spatial_dims must be 1 or 2, got {spatial_dims!r}")
        if len(kernel_sizes) != len(layers):
            raise ValueError(f"need one kernel size per stage: {len(layers)} stages, kernel_sizes={tuple(kernel_sizes)}")
        if any(k % 2 == 0 for k in (*kernel_sizes, stem_kernel_size)):
            raise ValueError(f"kernel sizes must be odd for 'same' padding, got {tuple(kernel_sizes)}, stem {stem_kernel_size}")
        if stem_stride not in (2, 4):
            raise ValueError(f"stem_stride must be 2 (the study) or 4, got {stem_stride!r}")
        if len(layers) > len(STAGE_CHANNELS):
            raise ValueError(f"at most {len(STAGE_CHANNELS)} stages, got layers={tuple(layers)}")
        if not 0.0 <= drop_rate < 1.0:
            raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate!r}")
        block_cls = _BLOCKS[(block, bool(preact))]
        self.spatial_dims = spatial_dims
        self.preact = bool(preact)
        self.in_chans = in_chans
        self.width = width
        self.drop_rate = drop_rate
        self.model_name: str | None = None  # set by create_model
        self.conv2d_layout = False  # see use_conv2d_layout
        # the stem conv and its max-pool, then one stride-2 block per stage after the first
        self.feature_stride = stem_stride * 2 * 2 ** max(len(layers) - 1, 0)
        self.pooling = "mean"
        self.anti_alias = bool(anti_alias)

        stem_chs = scale_channels(STEM_CHANNELS, width)
        stem = OrderedDict(conv=_conv(spatial_dims, in_chans, stem_chs, stem_kernel_size,
                                      stride=1 if anti_alias else stem_stride))
        if not preact:  # pre-act: the first block's BN-ReLU normalises the stem output
            stem["bn"] = _NORM[spatial_dims](stem_chs)
            stem["act"] = nn.ReLU(inplace=True)
        if anti_alias:  # the stem conv's stride 2 (or 4) as one (or two) low-pass + subsample steps
            for i in range(stem_stride.bit_length() - 1):  # log2 of the stride
                stem[f"conv_blur{i + 1}"] = BlurPool(stem_chs, spatial_dims)
            stem["pool"] = _MAX_POOL[spatial_dims](kernel_size=3, stride=1, padding=1)
            stem["pool_blur"] = BlurPool(stem_chs, spatial_dims)
        else:
            stem["pool"] = _MAX_POOL[spatial_dims](kernel_size=3, stride=2, padding=1)
        self.stem = nn.Sequential(stem)

        stages = []
        in_chs = stem_chs
        for stage_idx, (num_blocks, kernel_size) in enumerate(zip(layers, kernel_sizes)):
            channels = scale_channels(STAGE_CHANNELS[stage_idx], width)
            blocks = []
            for block_idx in range(num_blocks):
                stride = 2 if block_idx == 0 and stage_idx > 0 else 1
                blocks.append(block_cls(in_chs, channels, kernel_size, stride, spatial_dims, anti_alias))
                in_chs = channels * block_cls.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.num_features = in_chs

        if preact:  # ResNetV2: the last block's output is not yet normalised
            self.final_norm = nn.Sequential(
                OrderedDict(bn=_NORM[spatial_dims](self.num_features), act=nn.ReLU(inplace=True))
            )
        else:
            self.final_norm = nn.Identity()
        self.head_drop = nn.Dropout(drop_rate)
        self.num_classes = 0
        self.head: nn.Module = nn.Identity()
        self._init_weights()
        self.reset_classifier(num_classes)
        self.set_pooling(pooling)

    @property
    def supports_masked_pooling(self) -> bool:
        """Whether ``valid`` sample ranges map to the last feature map: 1-D networks on raw samples only.

        A 2-D spectrogram model (given spectrograms, or computing its STFT inside) pools over
        frequency too and its time axis is STFT frames, so it has no masked pooling.
        """
        return self.spatial_dims == 1 and self.input_transform is None

    def set_pooling(self, pooling: str) -> "ResNet":
        """Set the global pooling of the model: ``"mean"`` (every step, padding too), ``"masked"`` or ``"max"``.

        ``"max"`` takes each feature's maximum over every step (and frequency bin of a 2-D model).
        ``"masked"`` is refused (:class:`~ecgtl.errors.ConfigError`) for 2-D models. The mode
        changes no parameter; it tells callers to give :meth:`forward` the ``valid`` ranges.
        Returns ``self``.
        """
        if pooling not in POOLINGS:
            raise ConfigError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        if pooling == "masked" and not self.supports_masked_pooling:
            raise ConfigError(f"pooling=masked applies to 1-D models over raw ECG samples; {self.model_name or 'this model'} "
                              "is a 2-D (spectrogram) model, whose pooling also runs over frequency: use pooling=mean")
        self.pooling = pooling
        return self

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv1d, nn.Conv2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def use_conv2d_layout(self, enabled: bool = True) -> "ResNet":
        """Run a 1-D network as ``(1, k)`` 2-D convolutions over channels-last ``(B, C, 1, T)`` tensors.

        The same parameters and state dict (weights stay ``(out, in, k)``; checkpoints are
        unchanged), the same outputs up to floating-point rounding; on a GPU, cuDNN's
        channels-last (NHWC) kernels feed the tensor cores without the layout transposes that
        1-D convolutions cost. A speed option for CUDA (``benchmarks/bench_gpu.py`` measures
        it); on CPU it is slower. Returns ``self``.
        """
        if self.spatial_dims != 1:
            raise ValueError("use_conv2d_layout applies to 1-D networks (spatial_dims=1)")
        if self.input_transform is not None:
            raise ValueError("use_conv2d_layout does not apply to networks with an input transform")
        swap = _AS_2D if enabled else {v: k for k, v in _AS_2D.items()}
        for m in self.modules():
            if type(m) in swap:
                m.__class__ = swap[type(m)]
        self.conv2d_layout = bool(enabled)
        return self

    def get_classifier(self) -> nn.Module:
        """The head module (``nn.Linear``, or ``nn.Identity`` for a backbone)."""
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head with a freshly initialised ``Linear(num_features, num_classes)``.

        ``num_classes=0`` gives an identity head, so ``forward`` returns the features. The
        backbone is untouched; the new head is created on the backbone's device and dtype.
        """
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes!r}")
        ref = self.stem.conv.weight
        self.num_classes = int(num_classes)
        if num_classes > 0:
            self.head = nn.Linear(self.num_features, num_classes, device=ref.device, dtype=ref.dtype)
        else:
            self.head = nn.Identity()

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != self.spatial_dims + 2:
            expected = "(B, C, T)" if self.spatial_dims == 1 else "(B, C, F, T)"
            raise ValueError(f"expected input of shape {expected}, got shape {list(x.shape)}")

    def forward_feature_maps(self, x: torch.Tensor) -> torch.Tensor:
        """Feature maps before pooling.

        1-D: ``(B, in_chans, T)`` -> ``(B, num_features, ceil(T / feature_stride))`` (T in samples;
        ``feature_stride`` 32, or 64 with a stride-4 stem).
        2-D: ``(B, in_chans, F, T)`` -> ``(B, num_features, ceil(F / 32), ceil(T / 32))``.
        Useful for masked pooling over zero-padded records or for saliency maps.
        With an ``input_transform`` (the STFT models) the input is raw ECG ``(B, 1, T)``.
        """
        if self.input_transform is not None:
            x = self.input_transform(x)
        self._check_input(x)
        if self.conv2d_layout:
            x = self.final_norm(self.stages(self.stem(x.unsqueeze(2).contiguous(memory_format=torch.channels_last))))
            return x.squeeze(2)
        x = self.stem(x)
        x = self.stages(x)
        return self.final_norm(x)

    def forward_features(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Pooled feature vector: input ``(B, in_chans, T)`` (or ``(B, in_chans, F, T)``) -> ``(B, num_features)``.

        ``valid`` None: global average pooling over all remaining time (and frequency) steps,
        padding included. ``valid`` ``(B, 2)``, the sample range ``[start, end)`` of real signal
        in each input (1-D only): the average over the steps of :func:`valid_feature_steps`
        (masked pooling; ``valid = (0, T)`` gives the plain mean). With ``pooling="max"``: each
        feature's maximum over every step (``valid`` must be None). Unlike timm, whose
        ``forward_features`` returns unpooled maps, this is the embedding a pretext or target
        head consumes; :meth:`forward_feature_maps` gives the maps.
        """
        maps = self.forward_feature_maps(x)
        if self.pooling == "max":
            if valid is not None:
                raise ValueError("valid sample ranges apply to masked pooling; this model pools with max over every step")
            return maps.flatten(2).amax(dim=-1)
        if valid is None:
            return maps.flatten(2).mean(dim=-1)
        if not self.supports_masked_pooling:
            raise ValueError("valid sample ranges (masked pooling) apply to 1-D models over raw ECG samples only")
        if not torch.jit.is_tracing() and valid.shape[0] != maps.shape[0]:
            raise ValueError(f"valid has {valid.shape[0]} rows for a batch of {maps.shape[0]} inputs")
        return masked_mean(maps, valid_feature_steps(valid.to(maps.device), maps.shape[-1], self.feature_stride))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes)`` from pooled features ``(B, num_features)`` (dropout, then head).

        With ``num_classes == 0`` the (dropped-out, in training) features are returned.
        """
        return self.head(self.head_drop(features))

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``(B, num_classes)``, or features ``(B, num_features)`` for a backbone.

        ``valid``: per input the sample range ``[start, end)`` of real signal, ``(B, 2)``, for
        masked pooling (see :meth:`forward_features`); None pools over every step.
        """
        return self.forward_head(self.forward_features(x, valid))


CONV_LAYOUTS = ("auto", "1d", "2d")


def apply_conv_layout(module: nn.Module, layout: str, device: torch.device) -> str:
    """Set the convolution layout of every 1-D :class:`ResNet` inside ``module``; return the one used.

    ``layout``: ``"1d"`` (plain Conv1d), ``"2d"`` (:meth:`ResNet.use_conv2d_layout`: (1, k)
    Conv2d over channels-last tensors) or ``"auto"`` (``"2d"`` on CUDA, ``"1d"`` elsewhere). The
    parameters, state dict and outputs are the same either way; only the speed differs.
    """
    if layout not in CONV_LAYOUTS:
        raise ValueError(f"conv_layout must be one of {', '.join(CONV_LAYOUTS)}, got {layout!r}")
    if layout == "auto":
        layout = "2d" if device.type == "cuda" else "1d"
    for m in module.modules():
        if isinstance(m, ResNet) and m.spatial_dims == 1 and m.input_transform is None:
            m.use_conv2d_layout(layout == "2d")
    return layout


def _resnet1d(layers: Sequence[int], block: str, preact: bool, stem_stride: int = 2, **kwargs) -> ResNet:
    kwargs.setdefault("kernel_sizes", PAPER_KERNEL_SIZES)
    return ResNet(layers, block=block, preact=preact, spatial_dims=1, stem_stride=stem_stride, **kwargs)


def _fixed_by_name(name: str, kwargs: dict) -> dict:
    """``kwargs`` without ``stem_stride`` or ``anti_alias``: the model's name fixes them, so that a card's architecture rebuilds the same network."""
    if "stem_stride" in kwargs:
        raise ConfigError(f"{name}: the stem stride is part of the model's name (resnet18_preact_stem4 has stride 4), "
                          f"not an option; got stem_stride={kwargs['stem_stride']!r}")
    if "anti_alias" in kwargs:
        raise ConfigError(f"{name}: anti-aliasing is part of the model's name (resnet18_preact_antialiased), "
                          f"not an option; got anti_alias={kwargs['anti_alias']!r}")
    return kwargs


@register_model(aliases=("resnet18",))
def resnet18_postact(**kwargs) -> ResNet:
    """1-D ResNet-18, post-activation blocks of the authors' code (the paper's "ResNet-18v2" runs)."""
    return _resnet1d((2, 2, 2, 2), "basic", preact=False, **_fixed_by_name("resnet18_postact", kwargs))


@register_model(aliases=("resnet34",))
def resnet34_postact(**kwargs) -> ResNet:
    """1-D ResNet-34, post-activation blocks of the authors' code."""
    return _resnet1d((3, 4, 6, 3), "basic", preact=False, **_fixed_by_name("resnet34_postact", kwargs))


@register_model(aliases=("resnet50",))
def resnet50_postact(**kwargs) -> ResNet:
    """1-D ResNet-50 (bottleneck x4), post-activation blocks of the authors' code."""
    return _resnet1d((3, 4, 6, 3), "bottleneck", preact=False, **_fixed_by_name("resnet50_postact", kwargs))


@register_model(aliases=("resnet18v2",))
def resnet18_preact(**kwargs) -> ResNet:
    """1-D ResNet-18v2, pre-activation blocks (He et al. 2016) with a final BN + ReLU."""
    return _resnet1d((2, 2, 2, 2), "basic", preact=True, **_fixed_by_name("resnet18_preact", kwargs))


@register_model()
def resnet18_preact_stem4(**kwargs) -> ResNet:
    """1-D ResNet-18v2 with a stride-4 stem conv (total stride 64) for 250 Hz input.

    The same layers and state-dict keys as :func:`resnet18_preact`; only the stem conv's stride
    is 4 instead of 2, so at 250 Hz every layer after the stem conv spans the seconds it spans in
    ``resnet18_preact`` at 125 Hz (receptive field 1,327 samples = 5.3 s, against 667 samples =
    2.6 s for ``resnet18_preact`` at 250 Hz; one feature step 0.256 s). At
    width 0.25 the stride-2 model lost much at 250 Hz (0.667 vs 0.758 validation macro-F1 at
    125 Hz, 15 epochs; ``reports/recipe-ablation``).
    """
    return _resnet1d((2, 2, 2, 2), "basic", preact=True, stem_stride=4, **_fixed_by_name("resnet18_preact_stem4", kwargs))


@register_model()
def resnet18_preact_antialiased(**kwargs) -> ResNet:
    """1-D ResNet-18v2 with anti-aliased subsampling (:class:`BlurPool`, Zhang 2019).

    The same layers, state-dict keys and ``feature_stride`` (32) as :func:`resnet18_preact`, so
    either's state dict loads into the other (``load_state_dict``; an ``init`` card still rebuilds
    its own architecture); every stride-2 step low-passes with a ``[1, 2, 1] / 4``
    filter before it keeps every second sample. Why: the plain network's output moves with a shift
    of the input by a few samples (at width 0.25 and 125 Hz, one member's validation macro-F1 spans
    0.745-0.769 over shifts of 0-28 samples; ``reports/recipe-ablation/shift-sensitivity-full.md``).
    """
    return _resnet1d((2, 2, 2, 2), "basic", preact=True, anti_alias=True,
                     **_fixed_by_name("resnet18_preact_antialiased", kwargs))


@register_model()
def resnet18_preact_stem4_antialiased(**kwargs) -> ResNet:
    """:func:`resnet18_preact_stem4` (stride-4 stem, for 250 Hz) with anti-aliased subsampling.

    The stem conv runs at stride 1 and two :class:`BlurPool` steps take its stride of 4; the rest as
    in :func:`resnet18_preact_antialiased`. The same state-dict keys as ``resnet18_preact``;
    ``feature_stride`` 64.
    """
    return _resnet1d((2, 2, 2, 2), "basic", preact=True, stem_stride=4, anti_alias=True,
                     **_fixed_by_name("resnet18_preact_stem4_antialiased", kwargs))


@register_model(aliases=("resnet34v2",))
def resnet34_preact(**kwargs) -> ResNet:
    """1-D ResNet-34v2, pre-activation blocks with a final BN + ReLU."""
    return _resnet1d((3, 4, 6, 3), "basic", preact=True, **_fixed_by_name("resnet34_preact", kwargs))


@register_model()
def resnet34_preact_stem4(**kwargs) -> ResNet:
    """1-D ResNet-34v2 with a stride-4 stem conv (total stride 64) for 250 Hz input.

    :func:`resnet34_preact`'s layers and state-dict keys; the stem conv's stride is 4, as in
    :func:`resnet18_preact_stem4`, so the depth-34 model at 250 Hz has the feature step (0.256 s)
    of the width-0.25 cpu preset at 125 Hz, with twice the blocks (16 against 8) and a longer
    receptive field. The 34-layer 1-D CNNs of the 2017 challenge's era (Hannun et al.) are this deep.
    """
    return _resnet1d((3, 4, 6, 3), "basic", preact=True, stem_stride=4, **_fixed_by_name("resnet34_preact_stem4", kwargs))


@register_model(aliases=("resnet50v2",))
def resnet50_preact(**kwargs) -> ResNet:
    """1-D ResNet-50v2 (bottleneck x4), pre-activation blocks with a final BN + ReLU."""
    return _resnet1d((3, 4, 6, 3), "bottleneck", preact=True, **_fixed_by_name("resnet50_preact", kwargs))
