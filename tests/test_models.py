"""Tests of ecgtl.models: registry, shapes, head handling, transfer of backbones, parameter counts."""

from __future__ import annotations

import math

import pytest
import torch

from ecgtl.errors import ConfigError
from ecgtl.models import HEAD_PREFIX, backbone_state_dict, create_model, is_model, list_models, scale_channels

MODELS_1D = ["resnet18_postact", "resnet34_postact", "resnet50_postact", "resnet18_preact", "resnet34_preact", "resnet50_preact"]
MODELS_2D = ["resnet18_postact_2d", "resnet18_preact_2d"]
SMALL = 0.25  # width multiplier that keeps the tests fast


def _dummy_input(name: str, batch: int = 2, length: int = 512, in_chans: int = 1) -> torch.Tensor:
    if name.endswith("_2d"):
        return torch.randn(batch, in_chans, 33, length // 8)  # (B, C, F bins, T frames)
    return torch.randn(batch, in_chans, length)  # (B, C, T samples)


def _num_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _backbone_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for k, p in model.named_parameters() if not k.startswith(HEAD_PREFIX))


def test_registry_lists_all_models():
    assert list_models() == sorted(MODELS_1D + MODELS_2D + ["resnet18_postact_2d_stft", "resnet18_preact_2d_stft",
                                                             "resnet18_preact_antialiased", "resnet18_preact_stem4",
                                                             "resnet18_preact_stem4_antialiased", "resnet34_preact_stem4"])
    assert list_models("resnet*_preact") == ["resnet18_preact", "resnet34_preact", "resnet50_preact"]


@pytest.mark.parametrize("old, new", [("resnet18", "resnet18_postact"), ("resnet18v2", "resnet18_preact"),
                                      ("resnet50v2", "resnet50_preact"), ("resnet18v2_2d_stft", "resnet18_preact_2d_stft")])
def test_older_names_build_the_same_network_under_its_new_name(old, new):
    """Cards and presets written before the rename still load: an alias builds the registered model."""
    assert is_model(old) and old not in list_models() and old in list_models(aliases=True)
    torch.manual_seed(0)
    a = create_model(old, num_classes=4, width=SMALL)
    torch.manual_seed(0)
    b = create_model(new, num_classes=4, width=SMALL)
    assert a.model_name == b.model_name == new
    assert a.state_dict().keys() == b.state_dict().keys()
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())


def test_unknown_model_and_bad_arguments_raise_config_error():
    with pytest.raises(ConfigError, match="resnet18_preact"):  # the message lists the available models
        create_model("resnet19")
    with pytest.raises(ConfigError):
        create_model("resnet18_postact", num_classes=-1)
    with pytest.raises(ConfigError):
        create_model("resnet18_postact", width=0)


@pytest.mark.parametrize("name", MODELS_1D + MODELS_2D + ["resnet18_preact_antialiased", "resnet18_preact_stem4",
                                  "resnet18_preact_stem4_antialiased", "resnet34_preact_stem4"])
def test_create_model_output_and_feature_shapes(name):
    model = create_model(name, num_classes=3, width=SMALL).eval()
    expansion = 4 if name.startswith("resnet50") else 1
    assert model.model_name == name
    assert model.num_classes == 3
    assert model.num_features == scale_channels(512, SMALL) * expansion
    x = _dummy_input(name)
    with torch.no_grad():
        features = model.forward_features(x)
        logits = model(x)
    assert features.shape == (2, model.num_features)
    assert logits.shape == (2, 3)
    torch.testing.assert_close(logits, model.forward_head(features))


@pytest.mark.parametrize("name, stride", [("resnet18_postact", 32), ("resnet18_preact", 32), ("resnet18_preact_stem4", 64),
                                          ("resnet18_preact_antialiased", 32), ("resnet18_preact_stem4_antialiased", 64),
                                          ("resnet34_preact_stem4", 64)])
def test_1d_models_accept_any_length(name, stride):
    model = create_model(name, num_classes=4, width=SMALL).eval()
    assert model.feature_stride == stride
    with torch.no_grad():
        for length in (512, 2048, 4096, 16384, 777, 1001, 63):  # samples; odd lengths included
            x = torch.randn(1, 1, length)
            maps = model.forward_feature_maps(x)
            assert maps.shape == (1, model.num_features, math.ceil(length / stride)), length
            assert model(x).shape == (1, 4)


def test_the_stride4_stem_doubles_the_receptive_field_and_keeps_the_weights_layout():
    """resnet18_preact_stem4 at 250 Hz spans in seconds what resnet18_preact spans at 125 Hz: same weights, stem stride 4."""
    torch.manual_seed(0)
    base = create_model("resnet18_preact", num_classes=4, width=SMALL).eval()
    stem4 = create_model("resnet18_preact_stem4", num_classes=4, width=SMALL).eval()
    assert stem4.state_dict().keys() == base.state_dict().keys()
    assert all(stem4.state_dict()[k].shape == v.shape for k, v in base.state_dict().items())
    assert (base.stem.conv.stride, stem4.stem.conv.stride) == ((2,), (4,))

    def receptive_field(model) -> int:  # input samples one step of the last feature map depends on
        x = torch.randn(1, 1, 8192, requires_grad=True)
        maps = model.final_norm(model.stages(model.stem(x)))
        (grad,) = torch.autograd.grad(maps[0, :, maps.shape[-1] // 2].sum(), x)
        support = (grad[0, 0] != 0).nonzero().flatten()
        return int(support[-1] - support[0] + 1)

    assert (receptive_field(base), receptive_field(stem4)) == (667, 1327)  # 5.3 s at 125 and at 250 Hz
    # the stride is in the name, never an option: a card's architecture name rebuilds exactly its network
    for name in ("resnet18_preact", "resnet18_preact_stem4", "resnet34_preact_stem4", "resnet18_preact_2d_stft"):
        with pytest.raises(ConfigError, match="part of the model's name"):
            create_model(name, width=SMALL, stem_stride=4)
    from ecgtl.models.resnet1d import ResNet

    with pytest.raises(ValueError, match="stem_stride"):
        ResNet((2, 2, 2, 2), stem_stride=3)


def test_the_depth34_stride4_model_is_resnet34_preact_with_a_stride4_stem():
    """resnet34_preact_stem4: resnet34_preact's weights layout (a card or init loads across), stem stride 4, 16 blocks."""
    base = create_model("resnet34_preact", num_classes=4, width=SMALL)
    stem4 = create_model("resnet34_preact_stem4", num_classes=4, width=SMALL)
    assert {k: v.shape for k, v in stem4.state_dict().items()} == {k: v.shape for k, v in base.state_dict().items()}
    assert (base.stem.conv.stride, stem4.stem.conv.stride) == ((2,), (4,))
    assert [len(stage) for stage in stem4.stages] == [3, 4, 6, 3]
    assert (base.feature_stride, stem4.feature_stride) == (32, 64)


def test_2d_model_spatial_sizes_and_in_chans():
    model = create_model("resnet18_postact_2d", num_classes=4, in_chans=2, width=SMALL).eval()
    x = torch.randn(2, 2, 65, 129)  # (B, C, F, T)
    with torch.no_grad():
        assert model.forward_feature_maps(x).shape == (2, model.num_features, 3, 5)
        assert model(x).shape == (2, 4)


def test_multi_lead_input_and_wrong_rank():
    model = create_model("resnet18_preact", num_classes=4, in_chans=12, width=SMALL).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 12, 1000)).shape == (2, 4)
    with pytest.raises(ValueError, match=r"\(B, C, T\)"):
        model(torch.randn(2, 1000))  # a forgotten channel axis is an error, not a silent 2-D conv


def test_zero_classes_gives_a_backbone():
    model = create_model("resnet34_preact", num_classes=0, width=SMALL).eval()
    x = _dummy_input("resnet34_preact")
    assert isinstance(model.get_classifier(), torch.nn.Identity)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.forward_features(x))
    assert not any(k.startswith(HEAD_PREFIX) for k in model.state_dict())


@pytest.mark.parametrize("name", ["resnet18_postact", "resnet50_preact", "resnet18_postact_2d"])
def test_reset_classifier_changes_only_the_head(name):
    model = create_model(name, num_classes=5, width=SMALL)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.reset_classifier(4)
    after = model.state_dict()
    assert model.num_classes == 4
    assert after["head.weight"].shape == (4, model.num_features)
    assert after["head.bias"].shape == (4,)
    head_keys = {k for k in after if k.startswith(HEAD_PREFIX)}
    assert head_keys == {"head.weight", "head.bias"}
    assert set(before) - head_keys == set(after) - head_keys
    for k in set(after) - head_keys:
        assert torch.equal(before[k], after[k]), k
    model.reset_classifier(0)
    assert model.num_classes == 0 and "head.weight" not in model.state_dict()


def test_head_parameters_live_under_head_prefix():
    model = create_model("resnet18_preact", num_classes=5, width=SMALL, drop_rate=0.2)
    head_names = {f"{HEAD_PREFIX}{k}" for k, _ in model.get_classifier().named_parameters()}
    assert head_names == {k for k, _ in model.named_parameters() if k.startswith(HEAD_PREFIX)}
    assert _num_params(model) - _backbone_params(model) == model.num_features * 5 + 5


@pytest.mark.parametrize("name", ["resnet18_postact", "resnet18_preact"])
def test_backbone_transfers_from_pretext_to_target_head(name):
    torch.manual_seed(0)
    pretext = create_model(name, num_classes=5, width=SMALL)  # e.g. the 5 beat classes
    with torch.no_grad():  # move BN running stats away from their init so they are checked too
        pretext.train()(_dummy_input(name, batch=4))
    target = create_model(name, num_classes=4, width=SMALL)  # CinC 2017: N, A, O, ~
    result = target.load_state_dict(backbone_state_dict(pretext), strict=False)
    assert sorted(result.missing_keys) == ["head.bias", "head.weight"]
    assert result.unexpected_keys == []
    pretext.eval()
    target.eval()
    x = _dummy_input(name)
    with torch.no_grad():
        torch.testing.assert_close(target.forward_features(x), pretext.forward_features(x))
        assert target(x).shape == (2, 4)


def test_eval_is_deterministic_and_dropout_only_acts_in_training():
    torch.manual_seed(0)
    model = create_model("resnet18_postact", num_classes=4, width=SMALL, drop_rate=0.5)
    x = _dummy_input("resnet18_postact")
    with torch.no_grad():
        model.eval()
        torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)
        model.train()
        assert not torch.equal(model(x), model(x))  # dropout before the head


def test_gradients_reach_every_parameter():
    model = create_model("resnet50_preact", num_classes=4, width=SMALL, drop_rate=0.1).train()
    logits = model(_dummy_input("resnet50_preact", batch=3, length=256))
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 3])).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_block_styles():
    post, pre = create_model("resnet18_postact"), create_model("resnet18_preact")
    post_keys, pre_keys = set(post.state_dict()), set(pre.state_dict())
    # authors' post-activation: conv-BN-ReLU stem, BN on projection shortcuts, no final norm
    assert "stem.bn.weight" in post_keys and "stages.1.0.downsample.bn.weight" in post_keys
    assert not any(k.startswith("final_norm.") for k in post_keys)
    # pre-activation v2: bare conv stem, 1x1 conv shortcut without BN, final BN + ReLU
    assert "stem.bn.weight" not in pre_keys and "stages.1.0.downsample.weight" in pre_keys
    assert "final_norm.bn.weight" in pre_keys
    assert not any(n for n, m in post.named_modules() if isinstance(m, torch.nn.Conv1d) and m.bias is not None)


def test_width_multiplier_reduces_parameters():
    assert [scale_channels(c, 0.25) for c in (64, 128, 256, 512)] == [16, 32, 64, 128]
    assert scale_channels(64, 0.01) == 8  # floor of 8 channels
    full, quarter = create_model("resnet18_postact"), create_model("resnet18_postact", width=0.25)
    assert quarter.num_features == 128
    # convolution weights scale with width**2: about 1/16 of the parameters
    assert 1 / 20 < _num_params(quarter) / _num_params(full) < 1 / 12


def test_invalid_kernel_sizes_are_rejected():
    with pytest.raises(ValueError, match="odd"):
        create_model("resnet18_postact", kernel_sizes=(7, 5, 5, 4))
    with pytest.raises(ValueError, match="one kernel size per stage"):
        create_model("resnet18_postact", kernel_sizes=(7, 5, 5))


def _keras_feature_extractor_count(layers, kernel_sizes, bottleneck):
    """Parameters of the authors' Keras feature extractor (``ecg_feature_extractor``), counted by hand.

    Keras' ``count_params`` counts four numbers per BN channel (gamma, beta and the
    non-trainable moving mean and variance), so the count equals our trainable parameters
    plus the BN running statistics. Post-activation blocks; projection = 1x1 conv + BN.
    """
    expansion = 4 if bottleneck else 1
    total = 7 * 64 + 4 * 64  # stem conv k7 (1 -> 64) + BN
    in_chs = 64
    for stage, (num_blocks, k) in enumerate(zip(layers, kernel_sizes)):
        c = 64 * 2**stage
        for block in range(num_blocks):
            stride = 2 if block == 0 and stage > 0 else 1
            out = c * expansion
            if bottleneck:
                total += in_chs * c + k * c * c + c * out + 4 * (c + c + out)
            else:
                total += k * in_chs * c + k * c * c + 4 * (c + c)
            if in_chs != out or stride > 1:
                total += in_chs * out + 4 * out
            in_chs = out
    return total


def _count_with_running_stats(model):
    stats = sum(b.numel() for k, b in model.named_buffers() if k.endswith(("running_mean", "running_var")))
    return _backbone_params(model) + stats


def test_parameter_counts_match_the_study():
    """The study: the ResNet-18 feature extractor has about 4.49 M parameters (kernels 7/5/5/3).

    Full-width counts (backbone only; "+stats" adds the BN running mean/var, as Keras counts):

        resnet18_postact    4,482,880  (+stats 4,492,480 == the authors' Keras model, "4.49 M")
        resnet18_preact  4,481,088  (+stats 4,488,896)
        resnet34_postact    9,069,632  (+stats 9,086,656)     resnet34_preact  9,067,840
        resnet50_postact   16,920,896  (+stats 16,974,016)    resnet50_preact 16,913,216
        kernels 3/3/3/3 instead of 7/5/5/3: resnet18_postact 3,843,904 (-14 %)
    """
    rows = {}
    for name in MODELS_1D + MODELS_2D:
        model = create_model(name, num_classes=0)
        rows[name] = (_backbone_params(model), _count_with_running_stats(model))
        print(f"{name:14s} backbone {rows[name][0]:>11,}  with BN running stats {rows[name][1]:>11,}")

    # our post-activation models reproduce the authors' Keras feature extractors exactly
    paper = dict(layers=(2, 2, 2, 2), kernel_sizes=(7, 5, 5, 3), bottleneck=False)
    assert rows["resnet18_postact"][1] == _keras_feature_extractor_count(**paper) == 4_492_480
    assert rows["resnet34_postact"][1] == _keras_feature_extractor_count((3, 4, 6, 3), (7, 5, 5, 3), False)
    assert rows["resnet50_postact"][1] == _keras_feature_extractor_count((3, 4, 6, 3), (7, 5, 5, 3), True)
    assert round(rows["resnet18_postact"][1] / 1e6, 2) == 4.49
    # both block styles are within 0.5 % of 4.49 M: they differ only in where BN sits
    for name in ("resnet18_postact", "resnet18_preact"):
        assert abs(rows[name][0] / 4.49e6 - 1) < 0.005, name
    # the kernel sizes are what makes the count: 3/3/3/3 would give 3.84 M
    k3 = _backbone_params(create_model("resnet18_postact", kernel_sizes=(3, 3, 3, 3)))
    assert abs(k3 / 4.49e6 - 1) > 0.1
    # the 2-D ResNet-18 matches torchvision's resnet18_postact trunk (11,176,512 for 3 input channels)
    assert rows["resnet18_postact_2d"][0] == 11_176_512 - 2 * 64 * 7 * 7


@pytest.mark.parametrize("name", ["resnet18_postact_2d_stft", "resnet18_preact_2d_stft"])
def test_stft_models_take_raw_ecg(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=4, width=0.125).eval()
    x = torch.randn(3, 1, 2048)
    assert model(x).shape == (3, 4)
    assert model.forward_features(x).shape == (3, model.num_features)
    spec = model.input_transform(x)
    assert spec.shape == (3, 1, 33, 1 + 2048 // 8)
    # the spectrogram is computed, not learned: no extra weights in the state dict
    plain = create_model(name.replace("_stft", ""), num_classes=4, width=0.125)
    assert model.state_dict().keys() == plain.state_dict().keys()
    # a 10 Hz sine at 125 Hz peaks in the bin of 10 Hz
    t = torch.arange(2048) / 125.0
    s = model.input_transform(torch.sin(2 * torch.pi * 10 * t).reshape(1, 1, -1))[0, 0].mean(dim=1)
    assert int(s.argmax()) == round(10 / (125 / 64))


# ----------------------------------------------------------------------------- conv2d layout (GPU speed option)
@pytest.mark.parametrize("name", ["resnet18_postact", "resnet18_preact", "resnet50_preact"])
def test_conv2d_layout_keeps_parameters_outputs_and_gradients(name):
    torch.manual_seed(0)
    ref = create_model(name, num_classes=4, width=0.125, drop_rate=0.0)
    fast = create_model(name, num_classes=4, width=0.125, drop_rate=0.0)
    fast.load_state_dict(ref.state_dict())
    fast.use_conv2d_layout()
    assert fast.conv2d_layout
    assert {k: v.shape for k, v in fast.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    x = torch.randn(3, 1, 700)
    for train in (True, False):
        ref.train(train)
        fast.train(train)
        a, b = ref(x), fast(x)
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
    ref.train()
    fast.train()
    ref(x).square().sum().backward()
    fast(x).square().sum().backward()
    for (k, p), q in zip(ref.named_parameters(), fast.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-4, rtol=1e-3), k
    # the running batch-norm statistics moved identically
    for k, v in ref.state_dict().items():
        if "running" in k:
            assert torch.allclose(v, fast.state_dict()[k], atol=1e-6), k
    assert fast.forward_feature_maps(x).shape == ref.forward_feature_maps(x).shape
    fast.use_conv2d_layout(False)
    assert not fast.conv2d_layout and type(fast.stem.conv) is torch.nn.Conv1d


def test_conv2d_layout_really_runs_2d_kernels():
    model = create_model("resnet18_preact", num_classes=4, width=0.125).use_conv2d_layout()
    seen = []
    model.stem.conv.register_forward_hook(lambda m, i, o: seen.append((i[0].dim(), o.dim())))
    model(torch.randn(2, 1, 256))
    assert seen == [(4, 4)]


def test_apply_conv_layout_auto_and_refusals():
    from ecgtl.models import apply_conv_layout
    from ecgtl.models.future_prediction import FuturePrediction

    model = create_model("resnet18_preact", num_classes=4, width=0.125)
    assert apply_conv_layout(model, "auto", torch.device("cpu")) == "1d" and not model.conv2d_layout
    assert apply_conv_layout(model, "2d", torch.device("cpu")) == "2d" and model.conv2d_layout
    assert apply_conv_layout(model, "1d", torch.device("cpu")) == "1d" and not model.conv2d_layout
    with pytest.raises(ValueError, match="conv_layout"):
        apply_conv_layout(model, "3d", torch.device("cpu"))
    fp = FuturePrediction(create_model("resnet18_preact", num_classes=0, width=0.125), context_frames=2)
    apply_conv_layout(fp, "2d", torch.device("cpu"))
    assert fp.backbone.conv2d_layout
    stft = create_model("resnet18_preact_2d_stft", num_classes=4, width=0.125)
    apply_conv_layout(stft, "2d", torch.device("cpu"))  # 2-D / STFT models are left as they are
    with pytest.raises(ValueError, match="1-D"):
        create_model("resnet18_preact_2d", num_classes=4, width=0.125).use_conv2d_layout()


def test_compile_setting_is_true_false_or_auto_and_auto_means_cuda_only():
    from ecgtl.config import FinetuneConfig, PretrainConfig, compile_enabled, load_config

    pre = load_config(PretrainConfig, "paper", "pretrain", [])
    assert pre.compile == "auto" and pre.conv_layout == "auto"
    assert compile_enabled(pre.compile, torch.device("cuda")) and not compile_enabled(pre.compile, torch.device("cpu"))
    assert load_config(FinetuneConfig, "cpu", "finetune", []).compile is False  # variable shapes: off unless asked
    assert load_config(PretrainConfig, None, "pretrain", ["compile=yes"]).compile is True
    with pytest.raises(ConfigError, match="true, false or auto"):
        load_config(PretrainConfig, None, "pretrain", ["compile=maybe"])
    with pytest.raises(ConfigError, match="conv_layout"):
        load_config(FinetuneConfig, None, "finetune", ["conv_layout=3d"])


def test_blur_pool_passes_the_mean_stops_the_nyquist_frequency_and_keeps_centres():
    """BlurPool: [1, 2, 1] / 4 then stride 2: DC gain 1, zero at half the sampling rate, output i centred on input 2i."""
    from ecgtl.models.resnet1d import BlurPool

    blur = BlurPool(3)
    assert blur.state_dict() == {}  # a constant, not a parameter: state dicts keep their keys
    for length in (8, 9, 63, 64):
        assert blur(torch.zeros(1, 3, length)).shape == (1, 3, math.ceil(length / 2))
    constant = blur(torch.full((1, 3, 32), 2.0))
    torch.testing.assert_close(constant[..., 1:], torch.full((1, 3, 15), 2.0))  # step 0 sees the zero padding
    alternating = blur(torch.tensor([1.0, -1.0] * 16).expand(1, 3, 32))
    torch.testing.assert_close(alternating[..., 1:], torch.zeros(1, 3, 15))  # a plain stride 2 would keep all +1s
    impulse = torch.zeros(1, 3, 33)
    impulse[..., 20] = 1.0
    assert int(blur(impulse)[0, 0].argmax()) == 10
    assert BlurPool(2, spatial_dims=2)(torch.ones(1, 2, 9, 17)).shape == (1, 2, 5, 9)
    two_d = BlurPool(2, spatial_dims=2)(torch.ones(1, 2, 8, 16))  # even sizes: only the first row and column see padding
    torch.testing.assert_close(two_d[..., 1:, 1:], torch.ones(1, 2, 3, 7))


def test_the_antialiased_model_keeps_the_weights_layout_lengths_and_conv2d_layout():
    """resnet18_preact_antialiased: resnet18_preact's state dict (an init or card loads across), the same lengths."""
    torch.manual_seed(0)
    base = create_model("resnet18_preact", num_classes=4, width=SMALL).eval()
    aa = create_model("resnet18_preact_antialiased", num_classes=4, width=SMALL).eval()
    assert {k: v.shape for k, v in aa.state_dict().items()} == {k: v.shape for k, v in base.state_dict().items()}
    aa.load_state_dict(base.state_dict())
    assert aa.anti_alias and not base.anti_alias and aa.feature_stride == base.feature_stride == 32
    assert aa.stem.conv.stride == (1,) and aa.stem.pool.stride == 1
    with torch.no_grad():
        for length in (4096, 777, 63):
            x = torch.randn(2, 1, length)
            assert aa.forward_feature_maps(x).shape == base.forward_feature_maps(x).shape
        x = torch.randn(2, 1, 2048)
        plain_layout = aa(x)
        torch.testing.assert_close(aa.use_conv2d_layout(True)(x), plain_layout, rtol=1e-4, atol=1e-5)
        aa.use_conv2d_layout(False)
    with pytest.raises(ConfigError, match="part of the model's name"):
        create_model("resnet18_preact", width=SMALL, anti_alias=True)
    stem4 = create_model("resnet18_preact_stem4_antialiased", num_classes=4, width=SMALL)
    assert stem4.state_dict().keys() == base.state_dict().keys() and stem4.feature_stride == 64
    assert [type(m).__name__ for m in stem4.stem] == ["Conv1d", "BlurPool", "BlurPool", "MaxPool1d", "BlurPool"]


def test_antialiased_features_move_less_when_the_input_shifts_by_a_few_samples():
    """The reason for the option: with the same weights, shifting the input by 1-31 samples moves the
    pooled features of the anti-aliased network less than half as much as those of the plain one."""
    for seed in range(3):
        torch.manual_seed(seed)
        base = create_model("resnet18_preact", num_classes=0, width=SMALL).eval()
        aa = create_model("resnet18_preact_antialiased", num_classes=0, width=SMALL).eval()
        aa.load_state_dict(base.state_dict())
        x = torch.randn(4, 1, 4096 + 32)

        def moved(model):
            with torch.no_grad():
                f0 = model(x[..., :4096])
                return float(torch.stack([(model(x[..., k:4096 + k]) - f0).norm(dim=1) / f0.norm(dim=1)
                                          for k in range(1, 32)]).mean())

        assert moved(aa) < 0.5 * moved(base), seed


@pytest.mark.parametrize("block, preact, spatial_dims", [("basic", True, 1), ("basic", False, 1), ("bottleneck", True, 1),
                                                         ("bottleneck", False, 1), ("basic", True, 2)])
def test_every_strided_layer_of_an_antialiased_network_subsamples_through_a_blur(block, preact, spatial_dims):
    """anti_alias=True: no conv or max-pool keeps a stride > 1; one BlurPool per factor of 2, shortcut included;
    the same state-dict keys and shapes, and the same output sizes, as the plain network."""
    from ecgtl.models.resnet1d import BlurPool, ResNet

    def build(anti_alias):
        torch.manual_seed(0)
        return ResNet((1, 1, 1, 1), block=block, preact=preact, num_classes=4, width=SMALL, spatial_dims=spatial_dims,
                      kernel_sizes=(3, 3, 3, 3), anti_alias=anti_alias).eval()

    plain, aa = build(False), build(True)
    strided = lambda m: [n for n, x in m.named_modules()  # noqa: E731
                         if isinstance(x, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.MaxPool1d, torch.nn.MaxPool2d))
                         and not isinstance(x, BlurPool) and max(torch.nn.modules.utils._ntuple(spatial_dims)(x.stride)) > 1]
    assert len(strided(plain)) == 2 + 2 * 3  # the stem conv and pool; per stage 2-4 the main conv and the shortcut
    assert strided(aa) == []
    assert sum(isinstance(m, BlurPool) for m in aa.modules()) == 2 + 2 * 3
    assert {k: v.shape for k, v in aa.state_dict().items()} == {k: v.shape for k, v in plain.state_dict().items()}
    x = torch.randn(2, 1, 37, 301) if spatial_dims == 2 else torch.randn(2, 1, 301)
    with torch.no_grad():
        assert aa.forward_feature_maps(x).shape == plain.forward_feature_maps(x).shape
        assert aa(x).shape == (2, 4)


def test_the_stride4_antialiased_model_in_the_conv2d_layout_gives_the_same_outputs():
    """The GPU preset's candidate runs in the (1, k) conv2d layout on CUDA: its outputs must not change with the layout."""
    torch.manual_seed(0)
    model = create_model("resnet18_preact_stem4_antialiased", num_classes=4, width=SMALL).eval()
    x = torch.randn(2, 1, 4096)
    with torch.no_grad():
        plain_layout = model(x)
        torch.testing.assert_close(model.use_conv2d_layout(True)(x), plain_layout, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name, plain, width, length", [("resnet18_preact_antialiased", "resnet18_preact", 0.25, 8192),
                                                        ("resnet18_preact_antialiased", "resnet18_preact", 1.0, 8192),
                                                        ("resnet18_preact_stem4_antialiased", "resnet18_preact_stem4", 1.0, 16384)])
def test_antialiased_training_flops_are_112_percent_of_the_plain_network(name, plain, width, length):
    """The cost the docs quote: one training step (forward + backward) of an anti-aliased ResNet-18v2 counts
    1.12x (cut) the FLOPs of the plain one (torch.utils.flop_counter; on 2 CPU cores it takes 1.25-1.26x the
    time per step, reports/bench_antialias_cpu.json)."""
    from torch.utils.flop_counter import FlopCounterMode

    def train_flops(model_name):
        model = create_model(model_name, num_classes=4, width=width).train()
        with FlopCounterMode(display=False) as counter:
            model(torch.randn(1, 1, length)).sum().backward()
        return counter.get_total_flops()

    assert 1.12 <= train_flops(name) / train_flops(plain) < 1.13
