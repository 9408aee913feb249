"""Unit tests of the ISS wrapper and the DiTTA head (engine/model.py), tiny models, CPU."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import torch
from fixtures_model import EMBED_DIM, NUM_CLASSES, perturb_head, tiny_config
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from ditta_ros.engine.checkpoints import build_model
from ditta_ros.engine.model import (
    DropPath,
    ProjectionHead,
    TemporalAddon,
    dense_local_attention,
    local_attention,
    model_identity,
)
from ditta_ros.errors import CheckpointError, ConfigError

H, W = 64, 96


@pytest.fixture(scope="module")
def model() -> Any:
    return build_model(tiny_config(), "cpu")


def _input(batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, H, W, generator=torch.Generator().manual_seed(seed))


# --- ISS wrapper --------------------------------------------------------------------------

def test_layer_norm_eps_follow_the_reference(model: Any) -> None:
    seen = {1e-5: 0, 1e-6: 0}
    for name, module in model.iss.named_modules():
        if isinstance(module, nn.LayerNorm):
            small = "patch_embeddings" in name or "sequence_reduction" in name
            expected = 1e-5 if small else 1e-6
            assert module.eps == expected, name
            seen[expected] += 1
    # tiny: 4 patch-embedding norms + 3 spatial-reduction norms (stage 4 has sr 1);
    # 4 blocks x 2 block norms + 4 stage-end norms
    assert seen == {1e-5: 7, 1e-6: 12}


def test_forward_features_shapes_and_match_transformers(model: Any) -> None:
    x = _input()
    model.eval()
    with torch.no_grad():
        feats, logits = model.iss.forward_features(x)
        reference = model.iss.model(pixel_values=x).logits  # transformers' own decoder path
    assert feats.shape == (2, EMBED_DIM, H // 4, W // 4)
    assert logits.shape == (2, NUM_CLASSES, H // 4, W // 4)
    assert feats.min() >= 0  # post ReLU
    torch.testing.assert_close(logits, reference, rtol=1e-5, atol=1e-5)


def test_classifier_runs_in_float32_under_bf16_autocast(model: Any) -> None:
    x = _input()
    model.eval()
    head = model.iss.model.decode_head
    with torch.no_grad():
        plain_feats, plain_logits = model.iss.forward_features(x)
        assert torch.equal(plain_logits, head.classifier(plain_feats))  # fp32: unchanged
        with torch.autocast("cpu", dtype=torch.bfloat16):
            feats, logits = model.iss.forward_features(x)
            in_bf16 = head.classifier(feats)      # what autocast alone would give
        expected = head.classifier(feats.float())  # float32 weights, bf16 features
    assert feats.dtype == torch.bfloat16              # the network itself ran in bf16
    assert in_bf16.dtype == torch.bfloat16
    assert logits.dtype == torch.float32
    assert torch.equal(logits, expected)
    assert not torch.equal(logits, in_bf16.float())   # 8 significant bits were kept before


def test_decoder_dropout_drops_whole_channels() -> None:
    m = build_model(tiny_config(dropout=0.5), "cpu").train()
    captured: list[torch.Tensor] = []
    head = m.iss.model.decode_head
    hook = head.classifier.register_forward_pre_hook(lambda _m, a: captured.append(a[0]))
    torch.manual_seed(1)
    with torch.no_grad():
        feats, _ = m.iss.forward_features(_input())
    hook.remove()
    dropped_in = captured[0]  # (B, D, h, w)
    assert isinstance(head.dropout, nn.Dropout2d)
    zero = dropped_in.flatten(2).abs().amax(dim=2) == 0  # (B, D) whole channel is zero
    kept = ~zero
    assert zero.any() and kept.any()
    torch.testing.assert_close(dropped_in[kept], feats[kept] / 0.5)
    live = feats.flatten(2).abs().amax(dim=2) > 0
    assert (zero & live).any()  # a channel with signal was dropped entirely


def test_drop_path_rises_linearly_and_acts_in_train_only() -> None:
    m = build_model(tiny_config(drop_path=0.3), "cpu")
    rates = [b.drop_path.p if isinstance(b.drop_path, DropPath) else 0.0
             for s in m.iss.model.segformer.stages for b in s.blocks]
    assert rates == pytest.approx([0.0, 0.1, 0.2, 0.3])
    dp = DropPath(0.5).eval()
    x = torch.ones(64, 3, 4)
    assert torch.equal(dp(x), x)
    dp.train()
    torch.manual_seed(0)
    y = dp(x)
    per_sample = y.flatten(1)
    assert set(per_sample.unique().tolist()) <= {0.0, 2.0}
    assert (per_sample.amin(1) == per_sample.amax(1)).all()  # one draw per sample
    assert 0 < (per_sample[:, 0] == 0).sum() < 64


def test_backbone_and_decoder_parameters_partition_the_iss(model: Any) -> None:
    backbone = {id(p) for p in model.iss.backbone_parameters()}
    decoder = {id(p) for p in model.iss.decoder_parameters()}
    assert not backbone & decoder
    assert backbone | decoder == {id(p) for p in model.iss.parameters()}
    names = {n for n, p in model.iss.named_parameters() if id(p) in decoder}
    assert any("linear_projections.3" in n for n in names)
    assert {"model.decode_head.linear_fuse.weight", "model.decode_head.batch_norm.weight",
            "model.decode_head.batch_norm.bias", "model.decode_head.classifier.weight"} <= names


# --- local attention ----------------------------------------------------------------------

@pytest.mark.parametrize("radius, h, w", [(1, 5, 7), (2, 6, 6), (2, 3, 9), (1, 1, 4),
                                          (5, 3, 4)])
def test_local_attention_equals_dense_masked_reference(radius: int, h: int, w: int) -> None:
    g = torch.Generator().manual_seed(h * 10 + w)
    q, k = torch.randn(2, 8, h, w, generator=g), torch.randn(2, 8, h, w, generator=g)
    v = torch.randn(2, 3, h, w, generator=g)
    got = local_attention(q, k, v, radius)
    assert got.shape == (2, 3, h, w)
    torch.testing.assert_close(got, dense_local_attention(q, k, v, radius),
                               rtol=1e-5, atol=1e-5)


def test_window_clipped_at_borders_not_zero_padded() -> None:
    # q = 0 makes every score 0: the weights are uniform over the *existing* neighbours.
    h, w = 4, 5
    v = torch.arange(h * w, dtype=torch.float32).reshape(1, 1, h, w)
    q = torch.zeros(1, 2, h, w)
    k = torch.randn(1, 2, h, w)
    got = local_attention(q, k, v, 1)
    assert got[0, 0, 0, 0] == pytest.approx(v[0, 0, :2, :2].mean().item())
    assert got[0, 0, 2, 3] == pytest.approx(v[0, 0, 1:4, 2:5].mean().item())
    assert got[0, 0, 3, 4] == pytest.approx(v[0, 0, 2:, 3:].mean().item())


def test_raw_dot_product_without_scaling() -> None:
    # Two pixels, radius 1: each attends to both; check the weight is softmax(q.k), unscaled.
    q = torch.tensor([[[[1.0, 0.0]], [[0.0, 0.0]]]])  # (1, 2, 1, 2): q0 = (1, 0)
    k = torch.tensor([[[[2.0, 0.0]], [[0.0, 0.0]]]])  # k0 = (2, 0), k1 = 0
    v = torch.tensor([[[[1.0, 0.0]]]])  # (1, 1, 1, 2)
    got = local_attention(q, k, v, 1)
    expected = math.exp(2.0) / (math.exp(2.0) + 1.0)
    assert got[0, 0, 0, 0].item() == pytest.approx(expected, rel=1e-6)


def test_half_precision_scores_do_not_overflow() -> None:
    g = torch.Generator().manual_seed(0)
    q = 20 + torch.rand(1, 256, 4, 5, generator=g)  # q.k > 100000: beyond float16's range
    k = 20 + torch.rand(1, 256, 4, 5, generator=g)
    v = torch.randn(1, 3, 4, 5, generator=g)
    got = local_attention(q.half(), k.half(), v.half(), 1)
    assert got.dtype == torch.float16 and torch.isfinite(got).all()
    reference = dense_local_attention(q.half().float(), k.half().float(), v.half().float(), 1)
    torch.testing.assert_close(got.float(), reference, rtol=1e-2, atol=1e-2)


class _LargestTensor(TorchDispatchMode):
    """Records the element count of the largest tensor any op produces."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (),
                           kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_local_attention_never_builds_an_hw_by_hw_tensor() -> None:
    h, w, d, c, r = 48, 64, 8, 4, 2  # hw = 3072: dense would be 9.4 M entries
    q = torch.randn(1, d, h, w, requires_grad=True)
    k = torch.randn(1, d, h, w, requires_grad=True)
    v = torch.randn(1, c, h, w, requires_grad=True)
    with _LargestTensor() as probe:
        local_attention(q, k, v, r).sum().backward()
    window = (2 * r + 1) ** 2
    bound = max(d, c, window) * (h + 2 * r) * (w + 2 * r)  # O(hw (2r+1)^2)
    assert probe.largest <= bound
    assert probe.largest < (h * w) ** 2 / 100
    assert q.grad is not None and k.grad is not None and v.grad is not None


# --- add-on, projection, DittaModel ------------------------------------------------------

def test_temporal_addon_matches_reference_and_trains() -> None:
    torch.manual_seed(0)
    addon = TemporalAddon(6, radius=2)
    assert [type(m) for m in addon.mlp_q] == [nn.Linear, nn.ReLU, nn.Linear]
    f_cur, f_prev = torch.randn(1, 6, 5, 7), torch.randn(1, 6, 5, 7)
    l_prev = torch.randn(1, 3, 5, 7, requires_grad=True)
    out = addon(f_cur, f_prev, l_prev)

    def per_pixel(mlp: nn.Module, f: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bdhw,ed->behw", f, mlp[0].weight).add(
            mlp[0].bias[None, :, None, None]).relu().permute(0, 2, 3, 1).matmul(
            mlp[2].weight.T).add(mlp[2].bias).permute(0, 3, 1, 2)

    ref = dense_local_attention(per_pixel(addon.mlp_q, f_cur), per_pixel(addon.mlp_k, f_prev),
                                l_prev, 2)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    out.square().sum().backward()
    assert l_prev.grad is not None and l_prev.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in addon.parameters())
    with pytest.raises(ConfigError):
        TemporalAddon(6, radius=-1)


def test_projection_head_structure() -> None:
    head = ProjectionHead(EMBED_DIM)
    kinds = [type(m).__name__ for m in head]
    assert kinds == ["Conv2d", "ReLU", "Conv2d", "ReLU", "Conv2d"]
    assert all(m.kernel_size == (1, 1) and m.in_channels == m.out_channels == EMBED_DIM
               for m in head if isinstance(m, nn.Conv2d))
    assert head(torch.randn(2, EMBED_DIM, 3, 4)).shape == (2, EMBED_DIM, 3, 4)


def test_head_parameters_groups(model: Any) -> None:
    head = model.head_parameters("head")
    decoder = model.head_parameters("decoder")
    head_ids = {id(p) for p in list(model.addon.parameters())
                + list(model.projection.parameters())}
    assert {id(p) for p in head} == head_ids
    assert {id(p) for p in decoder} == head_ids | {id(p) for p in
                                                    model.iss.decoder_parameters()}
    assert not {id(p) for p in decoder} & {id(p) for p in model.iss.backbone_parameters()}
    with pytest.raises(ConfigError, match="which"):
        model.head_parameters("backbone")


def test_adaptation_state_round_trip() -> None:
    source = build_model(tiny_config(), "cpu")
    perturb_head(source)
    with torch.no_grad():
        source.iss.model.decode_head.classifier.bias.add_(1.0)
    state = source.adaptation_state()
    assert any(k.endswith("running_var") for k in state)
    assert any(k.startswith("addon.") for k in state) and any(
        k.startswith("projection.") for k in state)
    assert not any("segformer" in k for k in state)  # no backbone tensor
    target = build_model(tiny_config(), "cpu")
    target.load_adaptation_state(state)
    for key, value in target.adaptation_state().items():
        assert torch.equal(value, state[key]), key
    broken = dict(state)
    broken.pop("addon.mlp_q.0.weight")
    with pytest.raises(CheckpointError, match="missing keys.*addon.mlp_q.0.weight"):
        target.load_adaptation_state(broken)
    broken = dict(state)
    broken["projection.0.bias"] = torch.zeros(3)
    with pytest.raises(CheckpointError, match="shape mismatches.*projection.0.bias"):
        target.load_adaptation_state(broken)


def test_identity_names_the_base_model() -> None:
    a = build_model(tiny_config(), "cpu")
    b = build_model(tiny_config(), "cpu")
    c = build_model(tiny_config(seed=4), "cpu")
    assert a.identity == b.identity != c.identity
    assert len(a.identity) == 64
    adapted = copy.deepcopy(a)
    with torch.no_grad():
        adapted.iss.model.decode_head.classifier.bias.add_(1.0)
    assert adapted.identity == a.identity  # computed once, at build
    assert model_identity(adapted.iss) != a.identity
    # dropout / drop-path rates are not part of the base model
    assert build_model(tiny_config(dropout=0.3, drop_path=0.2), "cpu").identity == a.identity


# --- tiled local attention: gradients, tile edges, dtypes, memory --------------------------

def _qkv(b: int, d: int, c: int, h: int, w: int, seed: int,
         dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(b, ch, h, w, generator=g, dtype=dtype) for ch in (d, d, c))


@pytest.mark.parametrize("radius, h, w", [(1, 9, 10), (2, 17, 8), (3, 8, 16), (5, 12, 21),
                                          (0, 5, 9), (2, 1, 1), (4, 26, 3)])
def test_local_attention_gradients_equal_dense_reference_float64(radius: int, h: int,
                                                                  w: int) -> None:
    # Maps that are not multiples of the tile, tiles whose padding lies more than r beyond
    # the map (h = 9, r = 1: no key of those rows exists), several rows of tiles.
    q, k, v = (t.requires_grad_() for t in _qkv(2, 5, 3, h, w, h * 31 + w,
                                                dtype=torch.float64))
    grad_out = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(7),
                           dtype=torch.float64)
    got = local_attention(q, k, v, radius)
    ref = dense_local_attention(q, k, v, radius)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    got_grads = torch.autograd.grad(got, (q, k, v), grad_out)
    ref_grads = torch.autograd.grad(ref, (q, k, v), grad_out)
    for name, a, b in zip("qkv", got_grads, ref_grads, strict=True):
        assert torch.isfinite(a).all(), name
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=name)


def test_local_attention_passes_gradcheck() -> None:
    q, k, v = (t.requires_grad_() for t in _qkv(1, 3, 2, 3, 9, 5, dtype=torch.float64))
    assert torch.autograd.gradcheck(lambda a, b, c: local_attention(a, b, c, 2), (q, k, v))


def test_local_attention_accepts_channels_last_views() -> None:
    # TemporalAddon hands q and k over as permuted views of (B, h, w, D) tensors.
    q, k, v = _qkv(2, 6, 4, 11, 19, 3)
    q_view = q.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    k_view = k.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    torch.testing.assert_close(local_attention(q_view, k_view, v, 3),
                               dense_local_attention(q, k, v, 3), rtol=1e-5, atol=1e-5)


def test_local_attention_scores_stay_float32_under_autocast() -> None:
    # Autocast would run the score product in bfloat16 (errors ~1e-2); the function opts out.
    q, k, v = _qkv(1, 32, 4, 10, 12, 9)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = local_attention(q, k, v, 2)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, dense_local_attention(q, k, v, 2), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype, tol", [(torch.float16, 5e-3), (torch.bfloat16, 3e-2)])
def test_local_attention_low_precision_inputs(dtype: torch.dtype, tol: float) -> None:
    q, k, v = (t.to(dtype) for t in _qkv(1, 16, 4, 10, 12, 4))
    got = local_attention(q, k, v, 2)
    assert got.dtype == dtype and torch.isfinite(got).all()
    reference = dense_local_attention(q.float(), k.float(), v.float(), 2)
    torch.testing.assert_close(got.float(), reference, rtol=tol, atol=tol)


class _LargestStorage(TorchDispatchMode):
    """Records the largest storage (in elements) any op's output lives in: views count as
    the memory they share, not as their own element count."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (),
                           kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.untyped_storage().nbytes() // t.element_size())
        return out


def _largest_tensor_inference(h: int, w: int, d: int, c: int, r: int) -> int:
    q, k, v = _qkv(1, d, c, h, w, 0)
    with torch.inference_mode(), _LargestStorage() as probe:
        local_attention(q, k, v, r)
    return probe.largest


def test_local_attention_memory_grows_linearly_with_the_map() -> None:
    # Inference works one row of tiles at a time: with D and C small the largest tensor is a
    # row's scores, so a taller map (more rows of tiles) makes no larger tensor.
    d, c, r = 16, 8, 5
    small = _largest_tensor_inference(40, 64, d, c, r)
    large = _largest_tensor_inference(80, 64, d, c, r)
    assert large <= 1.1 * small
    assert large <= max(d, c, (2 * r + 1) ** 2) * (80 + 2 * r + 8) * (64 + 2 * r + 8)
