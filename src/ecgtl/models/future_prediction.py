"""Future prediction: the contrastive (CPC-like) pretext task of Weimann & Conrad (2021).

A window of ``context_frames + 1`` contiguous frames is cut into frames; every frame is
embedded by the backbone (ResNet + global average pooling, ``backbone.forward_features``);
a learned pooling token, prepended to the ``K`` context embeddings like a CLS token, is
run with them through a small Transformer encoder, and its output -- the context summary
``c`` -- scores candidate "next frames" ``e`` by a plain dot product ``c . e``. The true
next frame must score highest (cross-entropy over the candidates)::

    x: (B, C, (K + 1) * T)  ->  frames (B * (K + 1), C, T)  ->  backbone  ->  (B, K + 1, D)
    context (B, K, D) -> [pool token; context] * sqrt(D) + pos -> 3 x encoder layer -> c (B, D)
    next    (B, D)    -> scores = c @ next.T / sqrt(D)  (B, B),  targets = arange(B)

so item ``i``'s positive is its own next frame and its negatives are the next frames of the
other ``B - 1`` items of the batch (other windows, normally other patients). Extra
negatives per item -- e.g. frames of the same patient, as the authors' sampler can draw --
can be passed to :meth:`FuturePrediction.forward` (``negatives=``) and are appended as
further columns.

    >>> from ecgtl.models import create_model
    >>> task = FuturePrediction(create_model("resnet18_postact", width=0.25))   # D = 128
    >>> x = torch.randn(4, 1, 9 * 2048)                                  # 8 context frames + next
    >>> task(x).shape
    torch.Size([4, 4])
    >>> loss, acc = task.loss_and_accuracy(x)
    >>> pretrained = task.backbone.state_dict()                         # for fine-tuning

What was checked against the authors' TensorFlow code (github.com/kweimann/ecg-transfer-learning,
commit c255af5) and matched
    * ``transplant/tasks/cpc.py`` ``CPCSolver.call``: context frames and candidate frames are
      embedded by the *same* feature extractor (ResNet + ``GlobalAveragePooling1D``,
      ``finetuning/utils.py`` ``ecg_feature_extractor``; ``transplant/tasks/utils.py``
      ``embed_frames`` folds the frames into the batch); the pooled context vector scores the
      candidates by a raw dot product (``tf.matmul(context, samples)``): **no projection head,
      no L2 normalisation, no temperature**; logits go to
      ``SparseCategoricalCrossentropy(from_logits=True)`` (``pretraining/trainer.py``).
    * ``pretraining/utils.py`` ``task_solver('cpc')``: ``Encoder(num_layers=3,
      d_model=<channels of the last residual stage>, num_heads=8, dff=2 * d_model,
      dropout=0.)`` -- so d_model = ``backbone.num_features`` (512 for ResNet-18, 2,048 for
      ResNet-50), a feed-forward width of ``2 * d_model`` and **dropout 0** (our default too;
      the argument exists for experiments).
    * ``transplant/modules/attn_pool.py`` ``AttentionPooling``: one trainable pool-token vector
      (initialised ``truncated_normal``, std 1, cut at 2 std), prepended to the sequence; the
      encoder output at position 0 is the summary.
    * ``transplant/modules/transformer.py`` ``Encoder`` / ``EncoderLayer``: the whole sequence
      (pool token included) is multiplied by ``sqrt(d_model)``, a positional embedding is added
      (position 0 = the pool token), then dropout; post-norm layers (attention -> dropout ->
      add -> LayerNorm; Dense(dff) -> ReLU -> Dense(d_model) -> dropout -> add -> LayerNorm), no
      final norm. We use ``nn.TransformerEncoderLayer(norm_first=False, activation="relu")``,
      each of the ``num_layers`` layers built (and initialised) separately.
    * ``pretraining/trainer.py``: the paper's defaults ``--frame-size 2048``,
      ``--context-size 8``, ``--positive-offset 0`` (the positive is the frame right after the
      context), ``--context-overlap 0`` (contiguous frames); Adam(beta 0.9/0.98, eps 1e-9).

Where we differ, and why
    * **Temperature** (default departs from the authors): scores are divided by
      ``temperature = sqrt(d_model)`` (``temperature=1.0`` restores the authors' raw dot
      product). The summary is a post-LayerNorm vector of norm ~ ``sqrt(d_model)``, so raw
      scores start large: at initialisation their spread across a row is ~2-7 logits and the
      loss 3-18 for B = 16 (log B = 2.77), a confidently wrong start. Scaled, the initial loss
      is ~ log B, and in the synthetic sanity check of ``tests/test_future.py`` (width 0.125,
      B = 16, 400 Adam steps, two seeds) held-out accuracy reached 0.66-0.68 versus 0.41-0.43
      with the raw product. It is a fixed scale, so it cannot drift; the backbone can still
      grow its embeddings' norm to sharpen the softmax.
    * **Negatives** (``transplant/datasets/icentia11k.py`` ``cpc_data_generator``): the authors
      give every item its own ``ns`` negatives (``--ns``, default **1**), each a random frame at a
      random position of a random segment drawn uniformly from a buffer of 16 patients
      (``_choose_random_segment``; so a negative is from another patient about 15/16 of the time,
      and can come from the context's own patient or even segment); an unexposed option
      ``ns_same_segment_prob`` fixes the probability of the context's own segment. The positive
      is inserted at a random index among the ``ns + 1`` candidates. We use the **in-batch**
      next frames as negatives (``B - 1`` per item, no extra frames to embed), as CPC / InfoNCE
      does. Optional ``negatives=`` (B, N, C, T) adds per-item negatives (e.g. same-patient
      frames), and ``in_batch_negatives=False`` scores only ``[own next frame, own negatives]``
      -- the authors' exact formulation -- with target 0 (the order of candidates does not
      matter to a dot-product scorer, so no random insertion is needed). With in-batch
      negatives, a batch holding several windows of one patient gives same-patient negatives
      for free; a sampler must not put overlapping windows of one recording in a batch, or a
      "negative" can be (nearly) the positive.
    * **Positional embedding**: the authors add a fixed sinusoidal table; the default here is a
      *learned* table (``pos_embedding="learned"``, initialised like the pool token: truncated
      normal, std 1, which is the sinusoid's scale); ``pos_embedding="sinusoidal"`` gives the
      authors' table.
    * **Attention scale**: the authors' ``MultiHeadAttention`` divides the logits by
      ``sqrt(d_model)`` instead of ``sqrt(d_model / num_heads)`` (a quirk of their code that
      flattens attention by ``sqrt(num_heads)``); we keep PyTorch's standard
      ``sqrt(head_dim)``. PyTorch's layer also applies dropout to the attention weights and
      inside the feed-forward block; with the default dropout 0 this makes no difference.
    * **One backbone call**: the authors embed the context frames and the candidates in two
      calls, so in training BatchNorm normalises each group with its own batch statistics; we
      embed all ``B * (K + 1)`` frames (plus any extra negatives) in one call, so they share
      one set of statistics.
    * ``projection=True`` adds a ``Linear(D, D)`` on the summary (off by default, as in the
      authors' code).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ecgtl.errors import ConfigError

__all__ = ["FuturePrediction", "positive_top1", "sinusoidal_position_table"]


def sinusoidal_position_table(length: int, d_model: int) -> torch.Tensor:
    """The fixed table of Vaswani et al. (as in the authors' ``positional_embedding``): ``(length, d_model)``.

    Column ``2i`` holds ``sin(pos / 10000^(2i / d))``, column ``2i + 1`` ``cos`` of the same angle.
    """
    pos = torch.arange(length, dtype=torch.float64)[:, None]
    i = torch.arange(d_model, dtype=torch.float64)[None, :]
    angle = pos / torch.pow(10000.0, (2 * torch.div(i, 2, rounding_mode="floor")) / d_model)
    table = torch.empty(length, d_model, dtype=torch.float64)
    table[:, 0::2] = torch.sin(angle[:, 0::2])
    table[:, 1::2] = torch.cos(angle[:, 1::2])
    return table.float()


def positive_top1(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Fraction of rows whose positive (column ``targets[i]``) scores *strictly* above every other column.

    Ties count as misses, so a collapsed model (all scores equal) scores 0, not the ``1 / B``
    that ``argmax`` (first index wins) would give it.
    """
    positive = scores.gather(1, targets[:, None]).squeeze(1)
    others = scores.scatter(1, targets[:, None], float("-inf"))
    return (positive > others.max(dim=1).values).float().mean()


class FuturePrediction(nn.Module):
    """Contrastive future-frame prediction over a backbone (see the module docstring).

    Args:
        backbone: a registry model (``create_model(name, num_classes=0, ...)``) with
            ``forward_features(x) -> (N, num_features)`` and ``num_features``.
        context_frames: ``K``, frames in the context (the authors' ``--context-size``, 8).
        frame_samples: ``T``, samples per frame (``--frame-size``, 2,048 = 8.2 s at 250 Hz).
        num_layers: Transformer encoder layers (3).
        num_heads: attention heads (8); must divide ``backbone.num_features``.
        dropout: dropout in the encoder and after the positional embedding (authors: 0).
        dim_feedforward: hidden width of the encoder's feed-forward blocks;
            ``None`` -> ``2 * d_model`` as the authors.
        pos_embedding: ``"learned"`` (default) or ``"sinusoidal"`` (the authors' fixed table).
        projection: add a ``Linear(d_model, d_model)`` on the summary before scoring.
        temperature: scores are ``summary . embedding / temperature``; ``None`` (default) ->
            ``sqrt(d_model)``; ``1.0`` -> the authors' raw dot product.
        in_batch_negatives: score every item against the next frames of the whole batch
            (``True``, targets ``arange(B)``), or only against its own next frame and its own
            ``negatives`` (``False``, targets 0; the authors' formulation, needs ``negatives``).

    Attributes:
        backbone: the embedding network; save ``backbone.state_dict()`` for fine-tuning.
        d_model: ``backbone.num_features``.
        pool_token: ``(d_model,)`` learned pooling-token vector.
        encoder_layers: the ``num_layers`` Transformer encoder layers (``batch_first=True``).

    Raises:
        ConfigError: ``d_model`` not divisible by ``num_heads`` or another invalid argument.
    """

    def __init__(
        self,
        backbone: nn.Module,
        context_frames: int = 8,
        frame_samples: int = 2048,
        num_layers: int = 3,
        num_heads: int = 8,
        dropout: float = 0.0,
        dim_feedforward: int | None = None,
        pos_embedding: str = "learned",
        projection: bool = False,
        temperature: float | None = None,
        in_batch_negatives: bool = True,
    ):
        super().__init__()
        d_model = getattr(backbone, "num_features", None)
        if not isinstance(d_model, int) or d_model < 1 or not hasattr(backbone, "forward_features"):
            raise ConfigError("backbone must have an integer `num_features` and a `forward_features(x)` method")
        for name, value in (("context_frames", context_frames), ("frame_samples", frame_samples),
                            ("num_layers", num_layers), ("num_heads", num_heads)):
            if int(value) != value or value < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
        if d_model % num_heads != 0:
            raise ConfigError(
                f"d_model = backbone.num_features = {d_model} is not divisible by num_heads = {num_heads}; "
                f"pick num_heads among the divisors of {d_model} or a backbone width giving a multiple of {num_heads}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {dropout!r}")
        if pos_embedding not in ("learned", "sinusoidal"):
            raise ConfigError(f"pos_embedding must be 'learned' or 'sinusoidal', got {pos_embedding!r}")
        if temperature is not None and not temperature > 0:
            raise ConfigError(f"temperature must be > 0 (or None for sqrt(d_model)), got {temperature!r}")
        dim_feedforward = 2 * d_model if dim_feedforward is None else int(dim_feedforward)
        if dim_feedforward < 1:
            raise ConfigError(f"dim_feedforward must be >= 1, got {dim_feedforward!r}")

        self.backbone = backbone
        self.d_model = d_model
        self.context_frames = int(context_frames)
        self.frame_samples = int(frame_samples)
        self.num_heads = int(num_heads)
        self.pos_embedding_kind = pos_embedding
        self.in_batch_negatives = bool(in_batch_negatives)
        self.temperature = math.sqrt(d_model) if temperature is None else float(temperature)

        seq_len = self.context_frames + 1  # pool token + context
        self.pool_token = nn.Parameter(torch.empty(d_model))
        nn.init.trunc_normal_(self.pool_token, std=1.0, a=-2.0, b=2.0)
        if pos_embedding == "learned":
            self.pos_embed = nn.Parameter(torch.empty(seq_len, d_model))
            nn.init.trunc_normal_(self.pos_embed, std=1.0, a=-2.0, b=2.0)
        else:
            self.register_buffer("pos_embed", sinusoidal_position_table(seq_len, d_model), persistent=False)
        self.pos_drop = nn.Dropout(dropout)
        self.encoder_layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                d_model, num_heads, dim_feedforward=dim_feedforward, dropout=dropout,
                activation="relu", batch_first=True, norm_first=False,
            )
            for _ in range(int(num_layers))
        )
        self.projection = nn.Linear(d_model, d_model) if projection else nn.Identity()

    # ------------------------------------------------------------------ pieces
    @property
    def window_samples(self) -> int:
        """Samples per input window: ``(context_frames + 1) * frame_samples``."""
        return (self.context_frames + 1) * self.frame_samples

    def embed_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """Embed frames ``(B, F, C, T)`` -> ``(B, F, d_model)`` in one backbone call."""
        b, f = frames.shape[:2]
        return self.backbone.forward_features(frames.reshape(b * f, *frames.shape[2:])).reshape(b, f, -1)

    def split_frames(self, x: torch.Tensor) -> torch.Tensor:
        """Cut windows ``(B, C, (K + 1) * T)`` into frames ``(B, K + 1, C, T)`` (frame ``k`` = samples ``kT:(k+1)T``)."""
        if x.dim() != 3 or x.shape[-1] != self.window_samples:
            raise ValueError(
                f"expected windows of shape (B, C, {self.window_samples}) = (context_frames + 1) * frame_samples = "
                f"({self.context_frames} + 1) * {self.frame_samples} samples, got shape {list(x.shape)}"
            )
        b, c, _ = x.shape
        return x.reshape(b, c, self.context_frames + 1, self.frame_samples).transpose(1, 2)

    def summarize(self, context: torch.Tensor) -> torch.Tensor:
        """Context embeddings ``(B, K, d_model)`` -> summary ``(B, d_model)`` (pool token's output, projected)."""
        b, k, d = context.shape
        if k > self.pos_embed.shape[0] - 1:
            raise ValueError(f"at most {self.pos_embed.shape[0] - 1} context frames, got {k}")
        token = self.pool_token.to(context.dtype).expand(b, 1, d)
        h = torch.cat([token, context], dim=1) * math.sqrt(d) + self.pos_embed[: k + 1].to(context.dtype)
        h = self.pos_drop(h)
        for layer in self.encoder_layers:
            h = layer(h)
        return self.projection(h[:, 0])

    # ------------------------------------------------------------------ task
    def forward(self, x: torch.Tensor, negatives: torch.Tensor | None = None) -> torch.Tensor:
        """Scores of candidate next frames.

        Args:
            x: windows ``(B, C, (K + 1) * T)``: ``K`` context frames, then the next frame.
            negatives: optional extra negative frames per item, ``(B, N, C, T)``.

        Returns:
            ``in_batch_negatives=True``: ``(B, B + N)``; column ``j < B`` = the next frame of item
            ``j`` (positive on the diagonal), column ``B + n`` = item's own negative ``n``.
            ``in_batch_negatives=False``: ``(B, 1 + N)``; column 0 = own next frame.
        """
        frames = self.split_frames(x)
        b = frames.shape[0]
        n = 0
        if negatives is not None:
            if negatives.dim() != 4 or negatives.shape[0] != b or negatives.shape[2:] != frames.shape[2:]:
                raise ValueError(
                    f"negatives must have shape (B, N, C, T) = ({b}, N, {frames.shape[2]}, {frames.shape[3]}), "
                    f"got {list(negatives.shape)}"
                )
            n = negatives.shape[1]
            frames = torch.cat([frames, negatives.to(frames.dtype)], dim=1)
        elif not self.in_batch_negatives:
            raise ValueError("in_batch_negatives=False needs per-item `negatives` (B, N, C, T)")
        emb = self.embed_frames(frames)  # (B, K + 1 + N, D)
        summary = self.summarize(emb[:, : self.context_frames])  # (B, D)
        positive = emb[:, self.context_frames]  # (B, D)
        own_neg = emb[:, self.context_frames + 1:]  # (B, N, D)
        summary = summary / self.temperature
        if self.in_batch_negatives:
            scores = summary @ positive.T  # (B, B)
        else:
            scores = (summary * positive).sum(-1, keepdim=True)  # (B, 1)
        if n:
            scores = torch.cat([scores, torch.einsum("bd,bnd->bn", summary, own_neg)], dim=1)
        return scores

    def targets(self, scores: torch.Tensor) -> torch.Tensor:
        """Index of the positive in each row of ``scores``: ``arange(B)`` in-batch, else 0."""
        b = scores.shape[0]
        if self.in_batch_negatives:
            return torch.arange(b, device=scores.device)
        return torch.zeros(b, dtype=torch.long, device=scores.device)

    def loss_and_accuracy(
        self, x: torch.Tensor, negatives: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean cross-entropy over the candidates and the fraction of items whose positive scores highest.

        ``accuracy`` (a detached scalar tensor, see :func:`positive_top1`) counts ties as misses;
        chance is ``1 / B`` (in-batch, no extra negatives).
        """
        scores = self(x, negatives)
        targets = self.targets(scores)
        loss = F.cross_entropy(scores.float(), targets)
        accuracy = positive_top1(scores.detach(), targets)
        return loss, accuracy
