"""The ISS model (SegFormer) and the DiTTA head (ALGORITHM.md, "Model: ISS + DiTTA head").

Three parts, each a plain ``nn.Module``:

- :class:`SegformerISS` wraps transformers' ``SegformerForSemanticSegmentation`` and exposes
  the small :class:`ISSModel` interface the adaptation codes against: fused features F and
  plain logits L at 1/4 of the input size. It fixes the numerics where transformers differs
  from the reference MiT (LayerNorm eps, channel-wise decoder dropout, drop-path rates).
- :class:`TemporalAddon`: MLP_q, MLP_k and the local-window attention over the previous
  frame, computed tile by tile so memory is O(hw), never O((hw)^2).
- :class:`ProjectionHead`: the contrastive loss's 1x1-conv head.

:class:`DittaModel` holds the three and knows which tensors adaptation may change.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from transformers import SegformerConfig, SegformerForSemanticSegmentation

from ditta_ros.engine.errors import CheckpointError, ConfigError

# Reference MiT numerics (ALGORITHM.md): block and stage-end norms use eps 1e-6, the patch
# embedding and spatial-reduction norms keep PyTorch's default 1e-5.
BLOCK_NORM_EPS = 1e-6
EMBED_NORM_EPS = 1e-5

DEFAULT_WINDOW_RADIUS = 5


@dataclass(frozen=True)
class MitSpec:
    """Architecture of one MiT encoder size (published SegFormer configurations)."""

    hidden_sizes: tuple[int, int, int, int]
    depths: tuple[int, int, int, int]
    num_heads: tuple[int, int, int, int]
    sr_ratios: tuple[int, int, int, int] = (8, 4, 2, 1)
    mlp_ratios: tuple[int, int, int, int] = (4, 4, 4, 4)


_WIDE = (64, 128, 320, 512)
_HEADS = (1, 2, 5, 8)
MIT_VARIANTS: dict[str, MitSpec] = {
    # "tiny" is ours: a few-thousand-parameter encoder for tests and demos.
    "tiny": MitSpec((16, 32, 64, 128), (1, 1, 1, 1), (1, 1, 2, 4)),
    "b0": MitSpec((32, 64, 160, 256), (2, 2, 2, 2), _HEADS),
    "b1": MitSpec(_WIDE, (2, 2, 2, 2), _HEADS),
    "b2": MitSpec(_WIDE, (3, 4, 6, 3), _HEADS),
    "b3": MitSpec(_WIDE, (3, 4, 18, 3), _HEADS),
    "b4": MitSpec(_WIDE, (3, 8, 27, 3), _HEADS),
    "b5": MitSpec(_WIDE, (3, 6, 40, 3), _HEADS),
}


def segformer_config(variant: str, num_classes: int, embed_dim: int) -> SegformerConfig:
    """A transformers SegformerConfig for one MiT size, C classes and decoder width D."""
    if variant not in MIT_VARIANTS:
        raise ConfigError(f"unknown MiT variant {variant!r}; choose one of "
                          f"{sorted(MIT_VARIANTS)}")
    spec = MIT_VARIANTS[variant]
    return make_segformer_config(spec.hidden_sizes, spec.depths, spec.num_heads,
                                 spec.sr_ratios, spec.mlp_ratios, (7, 3, 3, 3), embed_dim,
                                 num_classes)


def make_segformer_config(hidden_sizes: tuple[int, ...], depths: tuple[int, ...],
                          num_heads: tuple[int, ...], sr_ratios: tuple[int, ...],
                          mlp_ratios: tuple[int, ...], patch_sizes: tuple[int, ...],
                          embed_dim: int, num_classes: int) -> SegformerConfig:
    """A SegformerConfig with the reference MiT's fixed parts (strides, GELU, no dropout
    inside the encoder; drop-path and decoder dropout are set by :class:`SegformerISS`)."""
    settings: dict[str, Any] = {
        "hidden_sizes": list(hidden_sizes), "depths": list(depths),
        "num_attention_heads": list(num_heads), "sr_ratios": list(sr_ratios),
        "mlp_ratios": list(mlp_ratios), "patch_sizes": list(patch_sizes),
        "strides": [4, 2, 2, 2], "decoder_hidden_size": embed_dim, "num_labels": num_classes,
        "hidden_act": "gelu", "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
        "drop_path_rate": 0.0, "reshape_last_stage": True,
    }
    return SegformerConfig(**settings)


@runtime_checkable
class ISSModel(Protocol):
    """What the adaptation needs from an ISS family (one implementation: SegFormer)."""

    num_classes: int
    embed_dim: int

    def forward_features(self, x: Tensor) -> tuple[Tensor, Tensor]: ...

    def backbone_parameters(self) -> Iterator[nn.Parameter]: ...

    def decoder_parameters(self) -> Iterator[nn.Parameter]: ...

    def decoder_state(self) -> dict[str, Tensor]: ...

    def load_decoder_state(self, state: Mapping[str, Tensor]) -> None: ...

    def architecture(self) -> dict[str, Any]: ...


class DropPath(nn.Module):
    """Stochastic depth: one Bernoulli per sample, survivors scaled by 1 / (1 - p)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class SegformerISS(nn.Module):
    """SegFormer (transformers) with the reference's numerics, behind :class:`ISSModel`.

    ``dropout`` is the channel-wise (Dropout2d) rate before the classifier; ``drop_path``
    the largest stochastic-depth rate, rising linearly from 0 over all blocks. Both act in
    train mode only.
    """

    def __init__(self, segformer: SegformerForSemanticSegmentation, dropout: float = 0.1,
                 drop_path: float = 0.1) -> None:
        super().__init__()
        config: Any = segformer.config
        if config.num_encoder_blocks != 4:
            raise CheckpointError(f"SegFormer with {config.num_encoder_blocks} stages is not "
                                  "supported: the DiTTA decoder expects the 4 MiT stages")
        self.model = segformer
        self.num_classes = int(config.num_labels)
        self.embed_dim = int(config.decoder_hidden_size)
        self._fix_numerics(dropout, drop_path)

    def _fix_numerics(self, dropout: float, drop_path: float) -> None:
        hf: Any = self.model
        stages = hf.segformer.stages
        total = sum(len(stage.blocks) for stage in stages)
        index = 0
        for stage in stages:
            stage.reshape = True  # the decoder needs every stage as (B, C, h, w)
            stage.layer_norm.eps = BLOCK_NORM_EPS
            stage.patch_embeddings.layer_norm.eps = EMBED_NORM_EPS
            for block in stage.blocks:
                block.layernorm_before.eps = BLOCK_NORM_EPS
                block.layernorm_after.eps = BLOCK_NORM_EPS
                reduction = getattr(block.attention, "sequence_reduction", None)
                if reduction is not None:
                    reduction.layer_norm.eps = EMBED_NORM_EPS
                rate = drop_path * index / max(total - 1, 1)
                block.drop_path = DropPath(rate) if rate > 0.0 else nn.Identity()
                index += 1
        hf.config.drop_path_rate = drop_path
        hf.config.layer_norm_eps = BLOCK_NORM_EPS
        # The reference drops whole channels (one Bernoulli per sample and channel).
        hf.decode_head.dropout = nn.Dropout2d(p=dropout)

    @property
    def config(self) -> SegformerConfig:
        return self.model.config

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.forward_features(x)

    def forward_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x (B, 3, Hin, Win) normalised -> F (B, D, h, w) post BN-ReLU, L (B, C, h, w)."""
        hf: Any = self.model
        stage_outputs: list[Tensor] = []
        hidden = x
        for stage in hf.segformer.stages:
            hidden = stage(hidden)  # (B, C_i, Hin / 2^(i+2), Win / 2^(i+2))
            stage_outputs.append(hidden)
        head = hf.decode_head
        size = stage_outputs[0].shape[2:]
        embedded: list[Tensor] = []
        for feature, mlp in zip(stage_outputs, head.linear_projections, strict=True):
            b, _, hh, ww = feature.shape
            tokens = mlp.proj(feature.flatten(2).transpose(1, 2))  # (B, hh*ww, D)
            grid = tokens.transpose(1, 2).reshape(b, -1, hh, ww)  # (B, D, hh, ww)
            embedded.append(F.interpolate(grid, size=size, mode="bilinear",
                                          align_corners=False))
        fused = head.linear_fuse(torch.cat(embedded[::-1], dim=1))  # stage 4, 3, 2, 1
        features = head.activation(head.batch_norm(fused))  # (B, D, h, w)
        logits = head.classifier(head.dropout(features))  # (B, C, h, w)
        return features, logits

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        return self.model.segformer.parameters()

    def decoder_parameters(self) -> Iterator[nn.Parameter]:
        """Stage embeddings, fuse conv, fuse BN weight and bias, classifier."""
        return self.model.decode_head.parameters()

    def decoder_state(self) -> dict[str, Tensor]:
        """Decoder parameters and BN buffers (running statistics), detached copies."""
        return {k: v.detach().clone() for k, v in self.model.decode_head.state_dict().items()}

    def load_decoder_state(self, state: Mapping[str, Tensor]) -> None:
        _load_exact(self.model.decode_head, state, "decoder")

    def architecture(self) -> dict[str, Any]:
        """The architecture facts that change the numbers (not dropout/drop-path rates)."""
        c: Any = self.model.config
        return {
            "family": "segformer",
            "hidden_sizes": list(c.hidden_sizes), "depths": list(c.depths),
            "num_attention_heads": list(c.num_attention_heads),
            "sr_ratios": list(c.sr_ratios), "mlp_ratios": list(c.mlp_ratios),
            "patch_sizes": list(c.patch_sizes), "strides": list(c.strides),
            "num_channels": int(c.num_channels), "hidden_act": str(c.hidden_act),
            "decoder_hidden_size": int(c.decoder_hidden_size), "num_labels": int(c.num_labels),
        }


# Side of the square query tiles. Of 4, 6, 7, 8, 10 and 12, 6 and 8 were fastest (one CPU
# thread, forward and forward+backward at B0 size: h x w = 120 x 216, D 256, C 124, r 5).
_TILE = 8


def local_attention(q: Tensor, k: Tensor, v: Tensor, radius: int) -> Tensor:
    """Windowed attention of frame t over frame t-1 (ALGORITHM.md, temporal add-on).

    q, k (B, D, h, w); v (B, C, h, w) -> (B, C, h, w). Pixel p attends to the pixels of k
    inside the (2r+1)^2 window centred on p; positions outside the map are excluded (not
    zero candidates); weights = softmax of the raw dot product (no 1/sqrt(D)).

    Tiled dense attention: the map is cut into T x T query tiles (T = 8); every window of a
    tile lies inside the tile's (T+2r) x (T+2r) key neighbourhood, so one batched matmul per
    row of tiles scores each tile's T^2 queries against its (T+2r)^2 keys, an additive bias
    (-inf) removes the keys outside each pixel's window or outside the map, and a second
    batched matmul sums the values. It computes (T+2r)^2 / (2r+1)^2 = 2.7 times the needed
    products (r = 5), but as large matrix products instead of (2r+1)^2 memory-bound passes
    over the whole map, which is many times faster (bench/bench_addon.py).

    Memory, never O((hw)^2): channels-last padded copies of q, k, v, O(hw (D + C)), and the
    scratch of one row of tiles at a time (its gathered keys and values, 5 times their share
    of k and v, and its T^2 x (T+2r)^2 scores). Under autograd the weights are kept,
    hw (T+2r)^2 values, but not the gathered tiles: the backward pass (written out, one row
    of tiles at a time) gathers them again, which is cheap, and adds the tiles' gradients
    back into their overlapping neighbourhoods.

    Scores accumulate and normalise in float32 (float64 for float64 inputs), also for
    float16/bfloat16 inputs and under autocast: a 256-term dot product overflows float16 long
    before one product does. The weights are cast to v's dtype for the value sum. The result
    is channels-last in memory (a permuted view), which interpolation and the losses take
    as is.
    """
    if radius < 0:
        raise ConfigError(f"window radius must be >= 0, got {radius}")
    _, _, h, w = q.shape
    score_dtype = torch.promote_types(torch.promote_types(q.dtype, k.dtype), torch.float32)
    tiling = _Tiling(h, w, radius, score_dtype, q.device)
    extra_h, extra_w = tiling.rows * _TILE - h, tiling.cols * _TILE - w  # tiles fit exactly
    keep = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    with torch.autocast(q.device.type, enabled=False):  # keep the dtypes chosen here
        q_hwc = _pad_hwc(q.to(score_dtype), 0, extra_h, 0, extra_w)  # (B, rows*T, cols*T, D)
        k_hwc = _pad_hwc(k.to(score_dtype), radius, radius + extra_h, radius,
                         radius + extra_w)  # (B, rows*T + 2r, cols*T + 2r, D)
        v_hwc = _pad_hwc(v, radius, radius + extra_h, radius,
                         radius + extra_w)  # (B, rows*T + 2r, cols*T + 2r, C)
        out = _TiledWindowAttention.apply(q_hwc, k_hwc, v_hwc, tiling, keep)
    return out[:, :h, :w].permute(0, 3, 1, 2)  # (B, C, h, w)


class _TiledWindowAttention(torch.autograd.Function):
    """The tiled attention over padded channels-last inputs, one row of tiles at a time:
    (B, rows*T, cols*T, D), (B, rows*T+2r, cols*T+2r, D), (B, rows*T+2r, cols*T+2r, C)
    -> (B, rows*T, cols*T, C)."""

    @staticmethod
    def forward(ctx: Any, q_hwc: Tensor, k_hwc: Tensor, v_hwc: Tensor, tiling: _Tiling,
                keep: bool) -> Tensor:
        b, c = q_hwc.shape[0], v_hwc.shape[-1]
        out = v_hwc.new_empty((b, tiling.rows * _TILE, tiling.cols * _TILE, c))
        kept: list[Tensor] = []
        for i in range(tiling.rows):
            q_t, k_t, v_t = tiling.gather(i, q_hwc, k_hwc, v_hwc)
            weights = torch.baddbmm(tiling.bias(i, b), q_t, k_t.transpose(1, 2)).softmax(
                dim=-1)  # (B*cols, T*T, n*n) float32
            tiling.put(out, i, torch.bmm(weights.to(v_hwc.dtype), v_t))  # (B*cols, T*T, C)
            if keep:
                kept.append(weights)
        if keep:
            ctx.save_for_backward(q_hwc, k_hwc, v_hwc, *kept)
            ctx.tiling = tiling
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        q_hwc, k_hwc, v_hwc, *kept = ctx.saved_tensors
        tiling: _Tiling = ctx.tiling
        grad_q = torch.zeros_like(q_hwc)
        # Neighbourhood gradients land in ceil(n/T) column blocks past each tile's start:
        # room for the last block, cropped at the end.
        wide = (tiling.cols + -(-tiling.n // _TILE) - 1) * _TILE
        grad_k = k_hwc.new_zeros((k_hwc.shape[0], k_hwc.shape[1], wide, k_hwc.shape[3]))
        grad_v = v_hwc.new_zeros((v_hwc.shape[0], v_hwc.shape[1], wide, v_hwc.shape[3]))
        with torch.autocast(q_hwc.device.type, enabled=False):
            for i, weights in enumerate(kept):
                q_t, k_t, v_t = tiling.gather(i, q_hwc, k_hwc, v_hwc)
                g_out = _query_tiles(grad_out[:, i * _TILE:(i + 1) * _TILE])  # (B*cols,T*T,C)
                g_v = torch.bmm(weights.to(v_hwc.dtype).transpose(1, 2), g_out)  # (.., n*n, C)
                g_w = torch.bmm(g_out, v_t.transpose(1, 2)).to(weights.dtype)  # (.., T*T, n*n)
                # softmax backward; masked keys have weight 0, so their score gradient is 0
                g_s = weights * (g_w - (g_w * weights).sum(dim=-1, keepdim=True))
                tiling.put(grad_q, i, torch.bmm(g_s, k_t))  # (B*cols, T*T, D)
                rows = slice(i * _TILE, i * _TILE + tiling.n)
                _add_neighbourhoods(grad_k[:, rows], torch.bmm(g_s.transpose(1, 2), q_t))
                _add_neighbourhoods(grad_v[:, rows], g_v)
        width = k_hwc.shape[2]
        return grad_q, grad_k[:, :, :width], grad_v[:, :, :width], None, None


class _Tiling:
    """Geometry of the tiles over an h x w map with window radius r, the score biases, and
    the gathers of one row of tiles."""

    def __init__(self, h: int, w: int, radius: int, dtype: torch.dtype,
                 device: torch.device) -> None:
        self.h, self.radius = h, radius
        self.n = _TILE + 2 * radius  # side of a tile's key neighbourhood
        self.rows, self.cols = -(-h // _TILE), -(-w // _TILE)  # tiles down, tiles across
        self.row_bias = _axis_bias(h, self.rows, radius, dtype, device)  # (rows, T, n)
        self.col_bias = _axis_bias(w, self.cols, radius, dtype, device)  # (cols, T, n)
        self._interior: Tensor | None = None

    def bias(self, i: int, batch: int) -> Tensor:
        """Score bias of tile row i, (B*cols, T*T, n*n): 0 or -inf."""
        t, n = _TILE, self.n
        interior = i * t - self.radius >= 0 and (i + 1) * t - 1 + self.radius < self.h
        if interior and self._interior is not None:  # rows clipped by the window alone
            bias = self._interior
        else:
            bias = (self.row_bias[i][None, :, None, :, None]
                    + self.col_bias[:, None, :, None, :]).reshape(self.cols, t * t, n * n)
            if interior:
                self._interior = bias
        return bias.expand(batch, -1, -1, -1).reshape(batch * self.cols, t * t, n * n)

    def gather(self, i: int, q_hwc: Tensor, k_hwc: Tensor,
               v_hwc: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Tile row i: queries (B*cols, T*T, D), keys (B*cols, n*n, D), values (B*cols,
        n*n, C), each tile's pixels row by row (copies: one matrix per tile for bmm)."""
        t, n = _TILE, self.n
        return (_query_tiles(q_hwc[:, i * t:(i + 1) * t]),
                _neighbourhoods(k_hwc[:, i * t:i * t + n], n),
                _neighbourhoods(v_hwc[:, i * t:i * t + n], n))

    def put(self, target: Tensor, i: int, tiles: Tensor) -> None:
        """Write (B*cols, T*T, C) tiles into tile row i of target (B, rows*T, cols*T, C)."""
        t, c = _TILE, tiles.shape[-1]
        band = target[:, i * t:(i + 1) * t].view(-1, t, self.cols, t, c)  # (B, T, cols, T, C)
        band.copy_(tiles.view(-1, self.cols, t, t, c).transpose(1, 2))


def _pad_hwc(x: Tensor, top: int, bottom: int, left: int, right: int) -> Tensor:
    """(B, D, h, w) -> zero-padded channels-last (B, top+h+bottom, left+w+right, D)."""
    x_hwc = x.permute(0, 2, 3, 1)
    if top == bottom == left == right == 0:
        return x_hwc
    return F.pad(x_hwc, (0, 0, left, right, top, bottom))


def _query_tiles(band: Tensor) -> Tensor:
    """(B, T, cols*T, D) -> (B*cols, T*T, D): the T x T tiles side by side."""
    b, t, width, d = band.shape
    return band.reshape(b, t, width // t, t, d).transpose(1, 2).reshape(-1, t * t, d)


def _neighbourhoods(band: Tensor, n: int) -> Tensor:
    """(B, n, cols*T + 2r, D) -> (B*cols, n*n, D): the n x n squares starting every T
    columns, overlapping by 2r."""
    d = band.shape[-1]
    squares = band.unfold(2, n, _TILE)  # (B, n, cols, D, n) view
    return squares.permute(0, 2, 1, 4, 3).reshape(-1, n * n, d)


def _add_neighbourhoods(target: Tensor, grads: Tensor) -> None:
    """Inverse of :func:`_neighbourhoods`, summing overlaps: add (B*cols, n*n, D) gradients
    into target (B, n, W, D), W >= (cols + ceil(n/T) - 1) * T. Block m of T columns of every
    neighbourhood goes to disjoint places, so each block is one strided add."""
    b, n, _, d = target.shape
    cols = grads.shape[0] // b
    squares = grads.view(b, cols, n, n, d)
    for m in range(-(-n // _TILE)):
        start, width = m * _TILE, min(_TILE, n - m * _TILE)
        place = target[:, :, start:start + cols * _TILE].unflatten(2, (cols, _TILE))
        place[:, :, :, :width].add_(squares[:, :, :, start:start + width].transpose(1, 2))


def _axis_bias(length: int, tiles: int, radius: int, dtype: torch.dtype,
               device: torch.device) -> Tensor:
    """Score bias along one axis, (tiles, T, T + 2r): 0 where neighbourhood position j may
    serve tile position a, -inf where j is outside a's window or outside the map.

    Queries in the padding (a beyond the map) keep their whole window, so no row of scores
    is all -inf: their softmax stays finite, and their (cropped) output gets no gradient.
    """
    t = _TILE
    a = torch.arange(t, device=device)[:, None]  # (T, 1) query position in the tile
    j = torch.arange(t + 2 * radius, device=device)[None, :]  # (1, n) neighbourhood position
    start = torch.arange(tiles, device=device)[:, None, None] * t  # (tiles, 1, 1)
    in_window = (j >= a) & (j <= a + 2 * radius)  # (T, n)
    key_inside = (start + j - radius >= 0) & (start + j - radius < length)  # (tiles, 1, n)
    query_outside = start + a >= length  # (tiles, T, 1)
    keep = in_window & (key_inside | query_outside)  # (tiles, T, n)
    return torch.zeros(keep.shape, dtype=dtype, device=device).masked_fill_(~keep,
                                                                              float("-inf"))


def dense_local_attention(q: Tensor, k: Tensor, v: Tensor, radius: int) -> Tensor:
    """Reference: dense (hw x hw) masked attention, as the research code does. Tests only."""
    b, d, h, w = q.shape
    qf = q.flatten(2).transpose(1, 2)  # (B, hw, D)
    kf = k.flatten(2)  # (B, D, hw)
    scores = qf @ kf  # (B, hw, hw)
    rows = torch.arange(h, device=q.device).repeat_interleave(w)  # (hw,)
    cols = torch.arange(w, device=q.device).repeat(h)  # (hw,)
    near = ((rows[:, None] - rows[None, :]).abs() <= radius) & \
        ((cols[:, None] - cols[None, :]).abs() <= radius)  # (hw, hw)
    weights = scores.masked_fill(~near, float("-inf")).softmax(dim=-1)  # (B, hw, hw)
    out = weights @ v.flatten(2).transpose(1, 2)  # (B, hw, C)
    return out.transpose(1, 2).reshape(b, -1, h, w)


def _pixel_mlp(dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))


class TemporalAddon(nn.Module):
    """The temporal fusion add-on: q = MLP_q(F_t), k = MLP_k(F_{t-1}), v = L_{t-1}."""

    def __init__(self, embed_dim: int, radius: int = DEFAULT_WINDOW_RADIUS) -> None:
        super().__init__()
        if radius < 0:
            raise ConfigError(f"window radius must be >= 0, got {radius}")
        self.radius = radius
        self.mlp_q = _pixel_mlp(embed_dim)
        self.mlp_k = _pixel_mlp(embed_dim)

    def forward(self, f_cur: Tensor, f_prev: Tensor, l_prev: Tensor) -> Tensor:
        """(B, D, h, w), (B, D, h, w), (B, C, h, w) -> add-on logits (B, C, h, w)."""
        q = self.mlp_q(f_cur.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # (B, D, h, w)
        k = self.mlp_k(f_prev.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # (B, D, h, w)
        return local_attention(q, k, l_prev, self.radius)

    def extra_repr(self) -> str:
        return f"radius={self.radius}"


class ProjectionHead(nn.Sequential):
    """Contrastive projection head: 1x1 conv - ReLU - 1x1 conv - ReLU - 1x1 conv, D -> D."""

    def __init__(self, embed_dim: int) -> None:
        super().__init__(
            nn.Conv2d(embed_dim, embed_dim, 1), nn.ReLU(),
            nn.Conv2d(embed_dim, embed_dim, 1), nn.ReLU(),
            nn.Conv2d(embed_dim, embed_dim, 1))


def model_identity(iss: ISSModel) -> str:
    """sha256 over the architecture and every tensor (parameters and buffers) of the ISS."""
    digest = hashlib.sha256()
    digest.update(json.dumps(iss.architecture(), sort_keys=True).encode())
    if not isinstance(iss, nn.Module):
        raise TypeError("an ISS model must be an nn.Module")
    for name, tensor in sorted(iss.state_dict().items()):
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}:{flat.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class DittaModel(nn.Module):
    """ISS model + temporal add-on + projection head; ``identity`` names the base model.

    ``identity`` is computed once here, from the base weights, and survives deep copies, so
    an adapted copy still names the model it was adapted from. ``class_names`` and
    ``head_seed`` (the seed the head was initialised with, None when it came from a
    checkpoint) are recorded for checkpoints and reports.
    """

    def __init__(self, iss: SegformerISS, addon: TemporalAddon, projection: ProjectionHead,
                 class_names: list[str] | None = None, head_seed: int | None = None) -> None:
        super().__init__()
        self.iss = iss
        self.addon = addon
        self.projection = projection
        self.num_classes = iss.num_classes
        self.embed_dim = iss.embed_dim
        self.class_names = class_names
        self.head_seed = head_seed
        self.identity = model_identity(iss)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.iss.forward_features(x)

    def head_parameters(self, which: str) -> list[nn.Parameter]:
        """Stage C's parameter group: "decoder" (paper) or "head" (add-on + projection)."""
        head = list(self.addon.parameters()) + list(self.projection.parameters())
        if which == "decoder":
            return list(self.iss.decoder_parameters()) + head
        if which == "head":
            return head
        raise ConfigError(f"head_parameters: which = {which!r} is not one of "
                          "['decoder', 'head']")

    def adaptation_state(self) -> dict[str, Tensor]:
        """Everything adaptation changes: decoder parameters and BN buffers, add-on,
        projection head; detached copies keyed "decoder.*", "addon.*", "projection.*"."""
        state = {f"decoder.{k}": v for k, v in self.iss.decoder_state().items()}
        for prefix, module in (("addon", self.addon), ("projection", self.projection)):
            state.update({f"{prefix}.{k}": v.detach().clone()
                          for k, v in module.state_dict().items()})
        return state

    def load_adaptation_state(self, state: Mapping[str, Tensor]) -> None:
        """Load :meth:`adaptation_state` output; CheckpointError on missing, unexpected or
        mis-shaped entries (nothing is changed then)."""
        expected = self.adaptation_state()
        _check_state(expected, state, "adaptation state")
        split: dict[str, dict[str, Tensor]] = {"decoder": {}, "addon": {}, "projection": {}}
        for key, value in state.items():
            prefix, rest = key.split(".", 1)
            split[prefix][rest] = value
        self.iss.load_decoder_state(split["decoder"])
        _load_exact(self.addon, split["addon"], "add-on")
        _load_exact(self.projection, split["projection"], "projection head")


def _check_state(expected: Mapping[str, Tensor], state: Mapping[str, Tensor],
                 what: str) -> None:
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [f"{k}: expected {tuple(expected[k].shape)}, got {tuple(state[k].shape)}"
                  for k in sorted(set(expected) & set(state))
                  if tuple(expected[k].shape) != tuple(state[k].shape)]
    problems = []
    if missing:
        problems.append(f"missing keys {_few(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_few(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches {_few(mismatched)}")
    if problems:
        raise CheckpointError(f"{what} does not fit this model: " + "; ".join(problems)
                              + ". It was written for a different model; use the matching "
                              "model checkpoint.")


def _few(items: list[str], limit: int = 5) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" (+{len(items) - limit} more)" if len(items) > limit else "")


def _load_exact(module: nn.Module, state: Mapping[str, Tensor], what: str) -> None:
    expected = module.state_dict()
    _check_state(expected, state, what)
    with torch.no_grad():
        for key, target in expected.items():
            target.copy_(state[key].to(device=target.device, dtype=target.dtype))
