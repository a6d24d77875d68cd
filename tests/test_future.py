"""Future-prediction (contrastive, CPC-like) pretext task: shapes, initial loss, gradients,
learning on predictable synthetic windows (and not on unpredictable ones), determinism."""

from __future__ import annotations

import math

import pytest
import torch

from ecgtl.errors import ConfigError
from ecgtl.models import create_model
from ecgtl.models.future_prediction import FuturePrediction, positive_top1, sinusoidal_position_table

K, T = 8, 64  # 8 context frames as the authors, short frames to keep CPU tests fast


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _task(seed: int = 0, width: float = 0.125, name: str = "resnet18", **kwargs) -> FuturePrediction:
    torch.manual_seed(seed)
    return FuturePrediction(create_model(name, width=width), context_frames=K, frame_samples=T, **kwargs)


def _sine_windows(gen: torch.Generator, batch: int, noise: float = 0.2) -> torch.Tensor:
    """(batch, 1, (K + 1) * T): one sinusoid per item (random frequency 0.01-0.2 cycles/sample and
    phase) running on across all frames, plus white noise -- the next frame is predictable."""
    n = (K + 1) * T
    freq = 0.01 + 0.19 * torch.rand(batch, 1, generator=gen)
    phase = 2 * math.pi * torch.rand(batch, 1, generator=gen)
    t = torch.arange(n, dtype=torch.float32)
    x = torch.sin(2 * math.pi * freq * t + phase) + noise * torch.randn(batch, n, generator=gen)
    return x[:, None]


def _unpredictable_windows(gen: torch.Generator, batch: int) -> torch.Tensor:
    """Like :func:`_sine_windows`, but the next frame comes from an unrelated sinusoid."""
    x = _sine_windows(gen, batch)
    x[..., K * T:] = _sine_windows(gen, batch)[..., K * T:]
    return x


# ---------------------------------------------------------------------- shapes and API
def test_shapes_and_api():
    task = _task(width=0.25)
    assert task.d_model == task.backbone.num_features == 128
    assert task.window_samples == (K + 1) * T
    x = torch.randn(6, 1, (K + 1) * T)
    scores = task(x)
    assert scores.shape == (6, 6)
    assert task.split_frames(x).shape == (6, K + 1, 1, T)
    assert task.embed_frames(task.split_frames(x)).shape == (6, K + 1, 128)
    loss, acc = task.loss_and_accuracy(x)
    assert loss.dim() == 0 and loss.requires_grad and torch.isfinite(loss)
    assert acc.dim() == 0 and not acc.requires_grad and 0.0 <= acc.item() <= 1.0
    assert torch.equal(task.targets(scores), torch.arange(6))
    # extra per-item negatives are appended as further columns
    negatives = torch.randn(6, 3, 1, T)
    assert task(x, negatives).shape == (6, 6 + 3)
    assert torch.isfinite(task.loss_and_accuracy(x, negatives)[0])


def test_default_architecture_follows_the_authors():
    task = _task(width=0.25)
    assert len(task.encoder_layers) == 3
    layer = task.encoder_layers[0]
    assert layer.self_attn.num_heads == 8 and layer.self_attn.batch_first
    assert layer.linear1.out_features == 2 * task.d_model  # dff = 2 * d_model
    assert not layer.norm_first  # post-norm, as their EncoderLayer
    assert isinstance(task.projection, torch.nn.Identity)
    assert task.pool_token.shape == (task.d_model,)
    assert task.pos_embed.shape == (K + 1, task.d_model)
    assert task.temperature == pytest.approx(math.sqrt(task.d_model))
    # layers are initialised independently (nn.TransformerEncoder would deep-copy one layer)
    assert not torch.equal(task.encoder_layers[0].linear1.weight, task.encoder_layers[1].linear1.weight)


def test_frames_are_cut_in_time_order():
    task = _task()
    x = torch.arange(2 * (K + 1) * T, dtype=torch.float32).reshape(2, 1, -1)
    frames = task.split_frames(x)
    for k in range(K + 1):
        assert torch.equal(frames[:, k], x[..., k * T:(k + 1) * T])


def test_scores_are_summary_dot_next_frame_embeddings():
    """Column j of row i is c_i . e_j / temperature, e_j the embedding of item j's frame K (the next one)."""
    task = _task(width=0.25).eval()
    x = torch.randn(5, 1, (K + 1) * T)
    with torch.no_grad():
        scores = task(x)
        context = torch.stack([task.backbone.forward_features(x[..., k * T:(k + 1) * T]) for k in range(K)], dim=1)
        summary = task.summarize(context)
        nxt = task.backbone.forward_features(x[..., K * T:])
        torch.testing.assert_close(scores, summary @ nxt.T / task.temperature, rtol=1e-4, atol=1e-4)
        # an extra negative identical to the own next frame scores exactly like the positive
        with_neg = task(x, x[..., K * T:][:, None])
        torch.testing.assert_close(with_neg[:, 5], torch.diagonal(with_neg[:, :5]), rtol=1e-4, atol=1e-4)


def test_authors_formulation_own_negatives_only():
    """in_batch_negatives=False: [own next frame, own N negatives], target 0 (authors' --ns)."""
    task = _task(in_batch_negatives=False, temperature=1.0, pos_embedding="sinusoidal")
    x = torch.randn(4, 1, (K + 1) * T)
    scores = task(x, torch.randn(4, 1, 1, T))  # ns = 1, the authors' default
    assert scores.shape == (4, 2)
    assert torch.equal(task.targets(scores), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="negatives"):
        task(x)


def test_options():
    task = _task(projection=True, pos_embedding="sinusoidal", dropout=0.1)
    assert isinstance(task.projection, torch.nn.Linear)
    assert "pos_embed" not in dict(task.named_parameters())  # a fixed buffer
    assert task(torch.randn(3, 1, (K + 1) * T)).shape == (3, 3)
    table = sinusoidal_position_table(9, 6)
    assert torch.equal(table[0], torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0, 1.0]))
    assert table[3, 0].item() == pytest.approx(math.sin(3.0))
    assert table[3, 3].item() == pytest.approx(math.cos(3.0 / 10000 ** (2 / 6)))


def test_positive_top1_counts_ties_as_misses():
    targets = torch.arange(3)
    assert positive_top1(torch.zeros(3, 3), targets).item() == 0.0
    assert positive_top1(torch.eye(3), targets).item() == 1.0
    assert positive_top1(torch.tensor([[1.0, 2.0, 0.0], [0.0, 1.0, 0.0], [3.0, 0.0, 2.0]]), targets).item() == pytest.approx(1 / 3)


def test_errors():
    with pytest.raises(ConfigError, match="divisible"):
        FuturePrediction(create_model("resnet18", width=0.3))  # 154 features, 8 heads
    with pytest.raises(ConfigError, match="divisible"):
        FuturePrediction(create_model("resnet18", width=0.125), num_heads=3)  # 64 features
    with pytest.raises(ConfigError):
        FuturePrediction(torch.nn.Linear(3, 3))
    with pytest.raises(ConfigError):
        _task(pos_embedding="rotary")
    with pytest.raises(ConfigError):
        _task(temperature=0.0)
    task = _task()
    with pytest.raises(ValueError, match="576"):
        task(torch.randn(2, 1, K * T))
    with pytest.raises(ValueError, match="negatives"):
        task(torch.randn(2, 1, (K + 1) * T), torch.randn(2, 1, T))


# ---------------------------------------------------------------------- initialisation
@pytest.mark.parametrize("name,width", [("resnet18", 0.125), ("resnet18", 0.25), ("resnet18v2", 0.25)])
def test_initial_loss_is_about_log_batch(name, width):
    batch = 16
    task = _task(seed=1, name=name, width=width)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for x in (torch.randn(batch, 1, (K + 1) * T, generator=gen), _sine_windows(gen, batch)):
            loss, acc = task.loss_and_accuracy(x)
            assert abs(loss.item() - math.log(batch)) < 0.75, loss.item()


def test_gradients_reach_backbone_transformer_and_pool_token():
    task = _task(width=0.25)
    loss, _ = task.loss_and_accuracy(torch.randn(4, 1, (K + 1) * T))
    loss.backward()
    for name, p in task.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    must_move = [
        task.backbone.stem.conv.weight,
        task.backbone.stages[-1][-1].conv2.weight,
        task.pool_token,
        task.pos_embed,
    ]
    for layer in task.encoder_layers:
        must_move += [layer.self_attn.in_proj_weight, layer.linear2.weight]
    for p in must_move:
        assert p.grad.abs().sum() > 0


def test_backbone_weights_transfer_to_a_classifier():
    task = _task()
    target = create_model("resnet18", num_classes=4, width=0.125)
    missing, unexpected = target.load_state_dict(task.backbone.state_dict(), strict=False)
    assert sorted(missing) == ["head.bias", "head.weight"] and unexpected == []


# ---------------------------------------------------------------------- learning
def _train(windows, steps: int = 150, batch: int = 16, seed: int = 0) -> tuple[float, float]:
    """Train a width-0.125 ResNet-18 task with the authors' Adam; held-out (eval-mode) loss and accuracy."""
    task = _task(seed=seed)
    opt = torch.optim.Adam(task.parameters(), lr=1e-3, betas=(0.9, 0.98), eps=1e-9)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        loss, _ = task.loss_and_accuracy(windows(gen, batch))
        opt.zero_grad()
        loss.backward()
        opt.step()
    task.eval()
    held_out = torch.Generator().manual_seed(10_000 + seed)
    with torch.no_grad():
        results = [task.loss_and_accuracy(windows(held_out, batch)) for _ in range(5)]
    return (sum(r[0].item() for r in results) / 5, sum(r[1].item() for r in results) / 5)


def test_learns_to_predict_the_next_frame():
    """150 steps (~3-4 s on one core): chance is 1/16; seeds 0-4 gave held-out accuracy 0.38-0.46,
    loss 1.18-1.39 (log 16 = 2.77); the control below stays at 0.04-0.08, loss 2.78-2.80."""
    loss, acc = _train(_sine_windows)
    assert acc > 0.25, acc  # 4x chance
    assert loss < math.log(16) - 1.0, loss


def test_does_not_learn_when_the_next_frame_is_unpredictable():
    """Control: same training, but the next frame is an unrelated sinusoid -> stays at chance
    (rules out a shortcut that would find the positive without using the context)."""
    loss, acc = _train(_unpredictable_windows)
    assert acc < 0.2, acc
    assert loss > math.log(16) - 0.2, loss


# ---------------------------------------------------------------------- determinism
def test_deterministic_under_a_fixed_seed():
    def run(seed):
        task = _task(seed=seed, dropout=0.1)  # dropout on: the seed must fix its masks too
        opt = torch.optim.Adam(task.parameters(), lr=1e-3)
        gen = torch.Generator().manual_seed(seed)
        losses = []
        for _ in range(3):
            loss, _ = task.loss_and_accuracy(_sine_windows(gen, 8))
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return losses, task.state_dict()

    losses_a, state_a = run(0)
    losses_b, state_b = run(0)
    assert losses_a == losses_b
    assert state_a.keys() == state_b.keys()
    for k in state_a:
        assert torch.equal(state_a[k], state_b[k]), k
    losses_c, _ = run(1)
    assert losses_c != losses_a
