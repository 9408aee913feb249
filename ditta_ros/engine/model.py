"""The ISS model (SegFormer) and the DiTTA head (ALGORITHM.md, "Model: ISS + DiTTA head").

Three parts, each a plain ``nn.Module``:

- :class:`SegformerISS` wraps transformers' ``SegformerForSemanticSegmentation`` and exposes
  the small :class:`ISSModel` interface the adaptation codes against: fused features F and
  plain logits L at 1/4 of the input size. It fixes the numerics where transformers differs
  from the reference MiT (LayerNorm eps, channel-wise decoder dropout, drop-path rates).
- :class:`TemporalAddon`: MLP_q, MLP_k and the local-window attention over the previous
  frame (:mod:`ditta_ros.engine.attention`: tile by tile, memory O(hw), never O((hw)^2)).
- :class:`ProjectionHead`: the contrastive loss's 1x1-conv head.

:class:`DittaModel` holds the three and knows which tensors adaptation may change.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import SegformerConfig, SegformerForSemanticSegmentation

from ditta_ros.engine.attention import dense_local_attention as dense_local_attention
from ditta_ros.engine.attention import local_attention
from ditta_ros.errors import CheckpointError, ConfigError

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


class Features(NamedTuple):
    """What :meth:`ISSModel.forward_features` returns, both at 1/4 of the input size.

    features: F (B, D, h, w), the decoder's fused features after BN-ReLU. logits: L
    (B, C, h, w), the plain branch's logits. A tuple, so ``f, l = ...`` unpacks it.
    """

    features: Tensor
    logits: Tensor


ATTENTION_IMPLEMENTATIONS = ("sdpa", "eager")


@runtime_checkable
class ISSModel(Protocol):
    """What the adaptation needs from an ISS family (one implementation: SegFormer)."""

    num_classes: int
    embed_dim: int

    def forward_features(self, x: Tensor) -> Features: ...

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
    train mode only. ``attention``: the encoder's attention kernel, "sdpa" (torch's fused
    scaled-dot-product attention) or "eager" (matmul-softmax-matmul, the reference MiT's
    operations, bit for bit; sdpa differs by up to a few 1e-6 in logits).
    """

    def __init__(self, segformer: SegformerForSemanticSegmentation, dropout: float = 0.1,
                 drop_path: float = 0.1, attention: str = "sdpa") -> None:
        super().__init__()
        config: Any = segformer.config
        if config.num_encoder_blocks != 4:
            raise CheckpointError(f"SegFormer with {config.num_encoder_blocks} stages is not "
                                  "supported: the DiTTA decoder expects the 4 MiT stages")
        self.model = segformer
        self.num_classes = int(config.num_labels)
        self.embed_dim = int(config.decoder_hidden_size)
        self._fix_numerics(dropout, drop_path)
        self.set_attention(attention)

    def set_attention(self, attention: str) -> None:
        """Choose the encoder's attention kernel: "sdpa" or "eager"."""
        if attention not in ATTENTION_IMPLEMENTATIONS:
            raise ConfigError(f"ModelConfig.attention_implementation = {attention!r} is not "
                              f"one of {list(ATTENTION_IMPLEMENTATIONS)}")
        hf: Any = self.model
        hf.set_attn_implementation(attention)
        self.attention = attention

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

    def forward(self, x: Tensor) -> Features:
        return self.forward_features(x)

    def forward_features(self, x: Tensor) -> Features:
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
        return Features(features, self._classify(head, features))

    @staticmethod
    def _classify(head: Any, features: Tensor) -> Tensor:
        """The classifier, in float32 also under autocast: its outputs are the logits that
        every decision reads (labels, reliabilities, fusion, the losses). At bf16 a logit
        stored in bfloat16 keeps 8 significant bits, which on a random-init B0 ties or flips
        the argmax of about 0.3 % of the pixels (1/4 resolution, 240 x 427 frame) on top of
        what the bfloat16 encoder and decoder change; the layer is 1/17 of a B0's products.
        At fp32 (no autocast) this is the plain classifier call, the same numbers."""
        x = head.dropout(features)
        device_type = features.device.type
        if not (torch.amp.is_autocast_available(device_type)
                and torch.is_autocast_enabled(device_type)):
            return head.classifier(x)  # (B, C, h, w)
        with torch.autocast(device_type, enabled=False):
            return head.classifier(x.float())  # (B, C, h, w) float32

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

    def forward(self, x: Tensor) -> Features:
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
