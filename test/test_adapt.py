"""Stage C (ditta_ros.engine.adapt): pure loss parts on hand-made arrays, then the adaptation
loop on a tiny seeded SegFormer (real transformers model, 64 x 96 frames)."""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ditta_ros.engine.adapt import (
    PrototypeStore,
    contrastive_loss,
    contrastive_weights,
    distill_loss,
    distillation_labels,
    normalized_features,
    object_prototype,
)
from ditta_ros.errors import InputError

# ----------------------------------------------------------------------------- Eq. 5


def test_distillation_labels_compose_objects_and_iss_labels() -> None:
    ids = np.array([[0, 1, 1],
                    [2, 2, 5],
                    [0, 5, 7]], np.int32)
    iss = np.array([[4, 4, 4],
                    [4, 4, 4],
                    [6, 6, 6]], np.int64)
    # object 2 has no class (left out of the mapping), object 7 is unknown to the mapping
    out = distillation_labels(ids, {1: 3, 5: 0}, iss)
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, [[4, 3, 3],
                                        [4, 4, 0],
                                        [6, 0, 6]])


def test_distillation_labels_work_per_clip_and_reject_mismatch() -> None:
    ids = np.zeros((2, 3, 4), np.int32)
    ids[1, 0, 0] = 9
    iss = np.ones((2, 3, 4), np.int64)
    out = distillation_labels(ids, {9: 2}, iss)
    assert out[1, 0, 0] == 2 and out.sum() == 2 * 3 * 4 - 1 + 2
    with pytest.raises(InputError, match="differ in shape"):
        distillation_labels(ids[0], {9: 2}, iss)


# ----------------------------------------------------------------------------- L_distill


def test_ce_on_probabilities_is_a_second_log_softmax() -> None:
    logits = torch.tensor([10.0, 0.0]).view(1, 2, 1, 1)   # (B, C, H, W)
    label = torch.zeros((1, 1, 1), dtype=torch.int64)
    plain = distill_loss(logits, label, on_probabilities=False)
    on_probs = distill_loss(logits, label, on_probabilities=True)
    assert float(plain) == pytest.approx(math.log(1 + math.exp(-10.0)), rel=1e-3)
    p = 1 / (1 + math.exp(-10.0))                          # softmax prob. of class 0
    expected = -math.log(math.exp(p) / (math.exp(p) + math.exp(1 - p)))
    assert float(on_probs) == pytest.approx(expected, rel=1e-5)
    assert float(on_probs) > 0.3 > float(plain)            # bounded below on probabilities


def test_distill_loss_is_the_mean_over_all_pixels() -> None:
    logits = torch.zeros(1, 3, 2, 2)
    logits[0, 1, 0, 0] = 5.0
    label = torch.tensor([[[1, 0], [0, 2]]])
    per_pixel = F.cross_entropy(torch.softmax(logits, 1), label, reduction="none")
    assert float(distill_loss(logits, label)) == pytest.approx(float(per_pixel.mean()))


# ----------------------------------------------------------------------------- Eq. 6-7


def _double_softmax_weights(probs: np.ndarray) -> np.ndarray:
    q = np.exp(probs) / np.exp(probs).sum(0)
    entropy = -(q * np.log(q)).sum(0)
    return 1 - (entropy - entropy.min()) / (entropy.max() - entropy.min())


def test_contrastive_weights_use_the_double_softmax_entropy() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 3, 5)) * 3
    probs = np.exp(logits) / np.exp(logits).sum(0)
    w = contrastive_weights(torch.from_numpy(probs).float())
    assert w.shape == (3, 5) and w.dtype == torch.float32
    np.testing.assert_allclose(w.numpy(), _double_softmax_weights(probs), atol=1e-5)
    assert float(w.min()) == 0.0 and float(w.max()) == 1.0
    # a constant map has no spread: every pixel counts fully (not NaN)
    assert torch.equal(contrastive_weights(torch.full((3, 2, 2), 1 / 3)), torch.ones(2, 2))


def test_one_object_gives_exactly_zero_but_a_graph() -> None:
    feats = F.normalize(torch.randn(4, 3, 3), dim=0).requires_grad_(True)
    proto = F.normalize(torch.randn(1, 4), dim=1)
    target = torch.full((3, 3), -1, dtype=torch.int64)
    target[1:, 1:] = 0
    loss = contrastive_loss(feats, proto, target)
    assert float(loss.detach()) == 0.0
    loss.backward()                                   # present: gradients exist (zeros)
    assert feats.grad is not None and torch.count_nonzero(feats.grad) == 0


def test_contrastive_mean_counts_ignored_pixels_in_the_denominator() -> None:
    # 2 x 2 frame, D = 2: pixel (0,0) in object 0, (0,1) in object 1, bottom row ignored
    feats = torch.tensor([[[1.0, 0.0], [0.6, 0.6]],
                          [[0.0, 1.0], [0.8, 0.8]]])          # (D, H, W)
    protos = torch.tensor([[1.0, 0.0], [0.0, 1.0]])             # (K, D)
    target = torch.tensor([[0, 1], [-1, -1]])
    loss = contrastive_loss(feats, protos, target, temperature=0.5)
    # each object pixel: logits (2, 0) towards its own prototype -> CE = log(1 + e^-2)
    per_pixel = math.log(1 + math.exp(-2.0))
    assert float(loss) == pytest.approx(2 * per_pixel / 4, rel=1e-6)
    pytorch_default = F.cross_entropy((protos @ feats.view(2, -1) / 0.5).T, target.view(-1),
                                      ignore_index=-1)
    assert float(pytorch_default) == pytest.approx(per_pixel, rel=1e-6)   # not ours


def test_prototype_is_weighted_mean_direction_and_store_averages() -> None:
    feats = torch.zeros(2, 2, 2)
    feats[0, 0, 0] = 1.0            # pixel (0,0) points along x
    feats[1, 0, 1] = 1.0            # pixel (0,1) points along y
    region = torch.tensor([[True, True], [False, False]])
    weights = torch.tensor([[1.0, 0.5], [1.0, 1.0]])
    proto = object_prototype(feats, weights, region)
    np.testing.assert_allclose(proto.numpy(), np.array([1.0, 0.5]) / math.hypot(1, 0.5),
                               rtol=1e-6)
    store = PrototypeStore()
    a, b, c = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]), torch.tensor([-1.0, 0.0])
    assert torch.equal(store.update(3, a), a)
    ab = store.update(3, b)
    np.testing.assert_allclose(ab.numpy(), [math.sqrt(0.5)] * 2, rtol=1e-6)
    abc = store.update(3, c)
    expected = (np.array([-1.0, 0.0]) + np.sqrt([0.5, 0.5])) / 2
    np.testing.assert_allclose(abc.numpy(), expected / np.linalg.norm(expected), rtol=1e-6)
    assert len(store) == 1 and store.get(4) is None


def test_normalized_features_are_unit_vectors_at_frame_size() -> None:
    x = torch.randn(1, 8, 4, 6)
    out = normalized_features(x, (16, 24))
    assert out.shape == (8, 16, 24)
    torch.testing.assert_close(out.norm(dim=0), torch.ones(16, 24))


# ----------------------------------------------------------------------------- the loop

import threading  # noqa: E402
from dataclasses import replace  # noqa: E402

from ditta_ros.config import AdaptationConfig, ModelConfig  # noqa: E402
from ditta_ros.engine import preprocess  # noqa: E402
from ditta_ros.engine.adapt import _Adaptation, _frame_targets, adapt  # noqa: E402
from ditta_ros.engine.checkpoints import build_model  # noqa: E402
from ditta_ros.engine.model import DittaModel  # noqa: E402
from ditta_ros.engine.types import StepLosses, Targets  # noqa: E402
from ditta_ros.errors import AdaptationError, CancelledError, ConfigError  # noqa: E402
from ditta_ros.synthetic import SyntheticVideo  # noqa: E402

H, W, C = 64, 96, 4
MODEL_CONFIG = ModelConfig(num_classes=C, embed_dim=16, fit_long=W, fit_short=H, seed=3)
FAST = AdaptationConfig(iterations=2)


def _model(config: ModelConfig = MODEL_CONFIG) -> DittaModel:
    return build_model(config, "cpu", window_radius=2)


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], prefix: str = "") -> bool:
    keys = [k for k in a if k.startswith(prefix)]
    assert keys, f"no tensor named {prefix}*"
    return all(torch.equal(a[k], b[k]) for k in keys)


def _clip(count: int, seed: int = 1) -> tuple[list[np.ndarray], np.ndarray]:
    frames, gt = SyntheticVideo(H, W, num_classes=C, num_shapes=3, seed=seed).clip(count)
    return list(frames), gt


def _targets(gt: np.ndarray, with_objects: bool = True) -> Targets:
    """Oracle targets: one object per shape class (id = class), its class voted right."""
    ids = np.array([1, 2, 3], np.int32)
    object_ids = gt.astype(np.int32) if with_objects else np.zeros(gt.shape, np.int32)
    return Targets(object_ids=object_ids, ids=ids, classes=ids.astype(np.int64),
                   scores=np.eye(C, dtype=np.float32)[ids])


def _run(model: DittaModel, count: int = 3, config: AdaptationConfig = FAST,
         targets: Targets | None = None, **kwargs: object) -> DittaModel:
    frames, gt = _clip(count)
    iss = np.zeros_like(gt)                    # a poor ISS: everything is ground
    return adapt(model, frames, iss, targets or _targets(gt), MODEL_CONFIG, config, "cpu",
                 **kwargs)  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny models gain nothing from intra-op threads; on a shared CPU spinning OpenMP
    workers slow them down many times over. Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def base() -> DittaModel:
    return _model()


def test_adapt_returns_a_new_model_and_leaves_the_input_alone(base: DittaModel) -> None:
    before = _state(base)
    flags = [p.requires_grad for p in base.parameters()]
    adapted = _run(base)
    assert adapted is not base and not adapted.training
    assert _same(before, _state(base))
    assert flags == [p.requires_grad for p in base.parameters()] and not base.training
    after = _state(adapted)
    assert _same(before, after, "iss.model.segformer.")              # backbone frozen
    assert not _same(before, after, "iss.model.decode_head.linear_fuse.")   # decoder trained
    assert not _same(before, after, "addon.mlp_q.")
    assert not _same(before, after, "projection.")
    assert adapted.identity == base.identity


def test_bn_running_statistics_follow_the_adaptation(base: DittaModel) -> None:
    before, after = _state(base), _state(_run(base))
    bn = "iss.model.decode_head.batch_norm."
    count = bn + "num_batches_tracked"
    assert int(after[count]) == int(before[count]) + 2 * 3     # one update per step
    assert not _same(before, after, bn + "running_mean")
    assert not _same(before, after, bn + "running_var")


def test_one_warmup_frame_leaves_the_addon_untouched(base: DittaModel) -> None:
    before = _state(base)
    after = _state(_run(base, count=1))
    assert _same(before, after, "addon.")        # no grad on frame-0 steps: no decay either
    assert not _same(before, after, "projection.")


def test_frames_without_objects_leave_the_projection_head_untouched(base: DittaModel) -> None:
    _, gt = _clip(3)
    before = _state(base)
    after = _state(_run(base, targets=_targets(gt, with_objects=False)))
    assert _same(before, after, "projection.")
    assert not _same(before, after, "addon.")


def test_head_group_trains_only_the_head(base: DittaModel) -> None:
    before = _state(base)
    after = _state(_run(base, config=replace(FAST, parameters="head")))
    assert _same(before, after, "iss.model.decode_head.linear_fuse.weight")
    assert _same(before, after, "iss.model.decode_head.classifier.")
    assert not _same(before, after, "addon.") and not _same(before, after, "projection.")
    # BN statistics still follow the clips in train mode
    assert not _same(before, after, "iss.model.decode_head.batch_norm.running_mean")


def test_steps_are_reported_in_order_with_their_terms(base: DittaModel) -> None:
    frames, gt = _clip(3)
    gt[2] = 0                                    # frame 2 has no object
    seen: list[StepLosses] = []
    _run(base, targets=_targets(gt), on_step=seen.append)
    assert [(s.iteration, s.frame, s.step) for s in seen] == \
        [(0, 0, 0), (0, 1, 1), (0, 2, 2), (1, 0, 3), (1, 1, 4), (1, 2, 5)]
    assert all(s.total_steps == 6 for s in seen)
    assert [s.distill_addon is None for s in seen] == [True, False, False] * 2
    assert [s.contrastive is None for s in seen] == [False, False, True] * 2
    for s in seen:
        parts = s.distill + (s.distill_addon or 0.0) + (s.contrastive or 0.0)
        assert s.total == pytest.approx(parts, rel=1e-5)
        assert s.contrastive is None or s.contrastive > 0.0   # 3 objects: not trivial


def test_reported_losses_are_taken_before_the_step() -> None:
    config = replace(MODEL_CONFIG, dropout=0.0, drop_path=0.0)
    model = _model(config)
    frames, gt = _clip(2)
    seen: list[StepLosses] = []
    _run(model, count=2, config=replace(FAST, iterations=1), on_step=seen.append)
    copy_ = _model(config).train()
    x = torch.from_numpy(preprocess.prepare(frames[0], W, H))[None]
    with torch.no_grad():
        _, logits = copy_.iss.forward_features(x)
    label = torch.from_numpy(gt[:1])             # Eq. 5 label: the oracle objects everywhere
    expected = distill_loss(preprocess.to_frame_size(logits, (H, W), (H, W)), label)
    assert seen[0].distill == pytest.approx(float(expected), rel=1e-5)


def test_momentum_model_is_an_ema_of_the_parameters(base: DittaModel) -> None:
    frames, gt = _clip(2)
    inputs = torch.from_numpy(np.stack([preprocess.prepare(f, W, H) for f in frames]))
    per_frame = [_frame_targets(gt[t].astype(np.int32), gt[t]) for t in range(2)]
    run = _Adaptation(base, inputs, (H, W), per_frame, FAST, torch.device("cpu"))
    with torch.enable_grad():
        run.step(0)
        m_before = [p.detach().clone() for p in run.momentum.parameters()]
        buffers = _state(run.momentum)
        run.step(1)
    for p_m, old, p_l in zip(run.momentum.parameters(), m_before, run.live.parameters()):
        # the same float32 operations as an EMA update: m <- 0.99 m + 0.01 live, bit for bit
        # (0.99 * old + 0.01 * live rounds differently, by one ulp on some elements)
        expected = old.clone().mul_(0.99).add_(p_l.detach(), alpha=0.01)
        torch.testing.assert_close(p_m, expected, rtol=0, atol=0)
    key = "iss.model.decode_head.batch_norm.num_batches_tracked"
    # buffers are not averaged: the momentum BN counts its own forward passes
    assert int(run.momentum.state_dict()[key]) == int(buffers[key]) + 1


def test_cancel_stops_between_steps(base: DittaModel) -> None:
    cancel = threading.Event()
    seen: list[StepLosses] = []

    def on_step(losses: StepLosses) -> None:
        seen.append(losses)
        if losses.step == 2:
            cancel.set()

    before = _state(base)
    with pytest.raises(CancelledError, match="after 3 of 6 steps"):
        _run(base, on_step=on_step, cancel=cancel)
    assert len(seen) == 3 and _same(before, _state(base))


def test_same_seed_same_weights_and_no_randomness_without_dropout() -> None:
    model = _model()
    a = _run(model).adaptation_state()
    b = _run(model).adaptation_state()
    c = _run(model, config=replace(FAST, seed=7)).adaptation_state()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)      # dropout draws follow the seed
    still = _model(replace(MODEL_CONFIG, dropout=0.0, drop_path=0.0))
    d = _run(still).adaptation_state()
    e = _run(still, config=replace(FAST, seed=7)).adaptation_state()
    assert all(torch.equal(d[k], e[k]) for k in d)


def test_nothing_to_distil_and_bad_inputs_are_refused(base: DittaModel) -> None:
    frames, gt = _clip(2)
    empty = Targets(np.zeros(gt.shape, np.int32), np.zeros(0, np.int32),
                    np.zeros(0, np.int64), np.zeros((0, C), np.float32))
    with pytest.raises(AdaptationError, match="no object"):
        adapt(base, frames, gt, empty, MODEL_CONFIG, FAST, "cpu")
    with pytest.raises(InputError, match="shapes disagree"):
        adapt(base, frames[:1], gt, _targets(gt), MODEL_CONFIG, FAST, "cpu")
    with pytest.raises(InputError, match=r"\[0, 4\)"):
        adapt(base, frames, gt + 4, _targets(gt), MODEL_CONFIG, FAST, "cpu")
    with pytest.raises(ConfigError, match="both off"):
        adapt(base, frames, gt, _targets(gt), MODEL_CONFIG,
              replace(FAST, distill=False, contrastive=False), "cpu")


def test_frame_targets_index_objects_in_ascending_id_order() -> None:
    rendered = np.array([[0, 7, 7], [3, 0, 12]], np.int32)
    label = np.ones((2, 3), np.int64)
    target = _frame_targets(rendered, label)
    assert target.object_ids == (3, 7, 12)
    np.testing.assert_array_equal(target.object_index.numpy(), [[-1, 1, 1], [0, -1, 2]])
    assert target.label.shape == (1, 2, 3)
    assert _frame_targets(np.full((2, 2), 5, np.int32), label[:, :2]).object_ids == (5,)


def test_prototypes_persist_across_steps(base: DittaModel) -> None:
    frames, gt = _clip(2)
    inputs = torch.from_numpy(np.stack([preprocess.prepare(f, W, H) for f in frames]))
    per_frame = [_frame_targets(gt[t].astype(np.int32), gt[t]) for t in range(2)]
    run = _Adaptation(base, inputs, (H, W), per_frame, FAST, torch.device("cpu"))
    with torch.enable_grad():
        run.step(0)
        first = {i: run.store.get(i) for i in per_frame[0].object_ids}
        run.step(1)
    assert len(run.store) == len(set(per_frame[0].object_ids) | set(per_frame[1].object_ids))
    for object_id, old in first.items():
        new = run.store.get(object_id)
        assert old is not None and new is not None and not torch.equal(old, new)
        assert float(new.norm()) == pytest.approx(1.0, abs=1e-5)


def test_adapt_runs_under_a_callers_inference_mode(base: DittaModel) -> None:
    with torch.inference_mode():
        adapted = _run(base, count=2, config=replace(FAST, iterations=1))
    assert not _same(_state(base), _state(adapted), "projection.")
