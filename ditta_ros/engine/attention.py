"""The temporal add-on's local-window attention (ALGORITHM.md, "Temporal add-on").

Pixel p of frame t attends to the pixels of frame t-1 inside the (2r+1) x (2r+1) window
centred on p. :func:`local_attention` computes it tile by tile with its own backward pass
(memory O(hw), never O((hw)^2)); :func:`dense_local_attention` is the research code's dense
masked attention, kept as the reference for tests.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from ditta_ros.errors import ConfigError

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
