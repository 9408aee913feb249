"""Key mapping from the paper's released ISS checkpoint (NVlabs-SegFormer / CFFM /
mmsegmentation key names) to this project's model (transformers SegFormer + DiTTA head).

The source layout, as facts: ``backbone.patch_embed{i}.{proj,norm}``,
``backbone.block{i}.{j}.{norm1, attn.q, attn.kv, attn.proj, attn.sr, attn.norm, norm2,
mlp.fc1, mlp.dwconv.dwconv, mlp.fc2}``, ``backbone.norm{i}``,
``decode_head.linear_c{i}.proj``, ``decode_head.linear_fuse.{conv,bn}``,
``decode_head.linear_pred`` and the DiTTA add-on ``decode_head.{query_layer, key_layer,
proj_feat}``. ``attn.kv`` stacks the key projection over the value projection (output rows
0..C-1 are k). mmseg heads also carry an unused ``decode_head.conv_seg``, which is dropped.

:func:`map_mmseg_state` is pure (tensors in, tensors out); the file handling lives in
:func:`ditta_ros.engine.checkpoints.convert_mmseg_checkpoint`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from torch import Tensor

from ditta_ros.engine.model import MIT_VARIANTS
from ditta_ros.errors import CheckpointError

_BLOCK_PARTS = {
    "norm1": "layernorm_before",
    "attn.q": "attention.q_proj",
    "attn.proj": "attention.o_proj",
    "attn.sr": "attention.sequence_reduction.sequence_reduction",
    "attn.norm": "attention.sequence_reduction.layer_norm",
    "norm2": "layernorm_after",
    "mlp.fc1": "mlp.fc1",
    "mlp.dwconv.dwconv": "mlp.dwconv.dwconv",
    "mlp.fc2": "mlp.fc2",
}
_BN_PARTS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")

# Source prefix -> (target prefix, target indices of its weight layers, what it is).
HEAD_GROUPS: dict[str, tuple[str, tuple[int, ...], str]] = {
    "decode_head.query_layer": ("addon.mlp_q", (0, 2), "MLP_q (Linear-ReLU-Linear)"),
    "decode_head.key_layer": ("addon.mlp_k", (0, 2), "MLP_k (Linear-ReLU-Linear)"),
    "decode_head.proj_feat": ("projection", (0, 2, 4),
                              "projection head (1x1 conv-ReLU-1x1 conv-ReLU-1x1 conv)"),
}
IGNORED_PREFIXES = ("decode_head.conv_seg.",)

_PATCH = re.compile(r"backbone\.patch_embed([1-4])\.(proj|norm)\.(weight|bias)")
_BLOCK = re.compile(r"backbone\.block([1-4])\.(\d+)\.(.+)\.(weight|bias)")
_NORM = re.compile(r"backbone\.norm([1-4])\.(weight|bias)")
_LINEAR_C = re.compile(r"decode_head\.linear_c([1-4])\.proj\.(weight|bias)")


@dataclass
class MappedState:
    """The result of :func:`map_mmseg_state`."""

    segformer: dict[str, Tensor]              # keys of SegformerForSemanticSegmentation
    head: dict[str, Tensor]                   # keys of DittaModel.adaptation_state()
    ignored: list[str] = field(default_factory=list)
    hidden_sizes: tuple[int, ...] = ()
    depths: tuple[int, ...] = ()
    patch_sizes: tuple[int, ...] = ()
    sr_ratios: tuple[int, ...] = ()
    mlp_ratios: tuple[int, ...] = ()
    embed_dim: int = 0
    num_classes: int = 0


def strip_wrappers(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Drop a DataParallel ``module.`` prefix carried by every key."""
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return state


def _stage(index: str) -> str:
    return f"segformer.stages.{int(index) - 1}"


def _map_backbone_key(key: str, value: Tensor, out: dict[str, Tensor]) -> bool:
    """Map one ``backbone.*`` / decoder key into ``out``; False if it is not one."""
    if m := _PATCH.fullmatch(key):
        part = "proj" if m[2] == "proj" else "layer_norm"
        out[f"{_stage(m[1])}.patch_embeddings.{part}.{m[3]}"] = value
    elif m := _BLOCK.fullmatch(key):
        block = f"{_stage(m[1])}.blocks.{m[2]}"
        if m[3] == "attn.kv":
            half = value.shape[0] // 2  # rows 0..C-1: key, C..2C-1: value
            out[f"{block}.attention.k_proj.{m[4]}"] = value[:half].clone()
            out[f"{block}.attention.v_proj.{m[4]}"] = value[half:].clone()
        elif m[3] in _BLOCK_PARTS:
            out[f"{block}.{_BLOCK_PARTS[m[3]]}.{m[4]}"] = value
        else:
            return False
    elif m := _NORM.fullmatch(key):
        out[f"{_stage(m[1])}.layer_norm.{m[2]}"] = value
    elif m := _LINEAR_C.fullmatch(key):
        out[f"decode_head.linear_projections.{int(m[1]) - 1}.proj.{m[2]}"] = value
    elif key == "decode_head.linear_fuse.conv.weight":
        out["decode_head.linear_fuse.weight"] = value
    elif key.startswith("decode_head.linear_fuse.bn.") and key.rsplit(".", 1)[1] in _BN_PARTS:
        out[f"decode_head.batch_norm.{key.rsplit('.', 1)[1]}"] = value
    elif key in ("decode_head.linear_pred.weight", "decode_head.linear_pred.bias"):
        out[f"decode_head.classifier.{key.rsplit('.', 1)[1]}"] = value
    else:
        return False
    return True


def _natural(path: str) -> tuple[tuple[int, int | str], ...]:
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in path.split("."))


def _map_head_group(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """Map one add-on Sequential by the order of its weight layers."""
    target, indices, what = HEAD_GROUPS[prefix]
    layers: dict[str, dict[str, Tensor]] = {}
    for key, value in state.items():
        if key.startswith(prefix + "."):
            layer, param = key[len(prefix) + 1:].rpartition(".")[::2]
            layers.setdefault(layer, {})[param] = value
    ordered = sorted(layers, key=_natural)
    if len(ordered) != len(indices):
        raise CheckpointError(f"{prefix} has {len(ordered)} weight layers {ordered}, expected "
                              f"{len(indices)} for the {what}")
    out: dict[str, Tensor] = {}
    for layer, index in zip(ordered, indices, strict=True):
        params = layers[layer]
        if set(params) != {"weight", "bias"}:
            raise CheckpointError(f"{prefix}.{layer} has parameters {sorted(params)}, expected "
                                  f"weight and bias (the {what} has no norm layers)")
        out[f"{target}.{index}.weight"] = params["weight"]
        out[f"{target}.{index}.bias"] = params["bias"]
    return out


def map_mmseg_state(state: dict[str, Tensor]) -> MappedState:
    """Rename an NVlabs/mmseg SegFormer (+ DiTTA add-on) state dict; infer the architecture.

    Raises CheckpointError on keys it does not know or an incomplete add-on. Shapes are
    checked later against the model built from the inferred architecture.
    """
    state = strip_wrappers(state)
    segformer: dict[str, Tensor] = {}
    unknown: list[str] = []
    ignored = sorted(k for k in state if k.startswith(IGNORED_PREFIXES))
    head_keys = [k for k in state if k.startswith(tuple(p + "." for p in HEAD_GROUPS))]
    for key, value in state.items():
        if key in ignored or key in head_keys:
            continue
        if not _map_backbone_key(key, value, segformer):
            unknown.append(key)
    if unknown:
        raise CheckpointError(f"unexpected keys (not a SegFormer/DiTTA state dict?): "
                              f"{sorted(unknown)[:8]}")
    present = [p for p in HEAD_GROUPS if any(k.startswith(p + ".") for k in head_keys)]
    if present and len(present) != len(HEAD_GROUPS):
        missing = sorted(set(HEAD_GROUPS) - set(present))
        raise CheckpointError(f"the DiTTA add-on is incomplete: {present} present but "
                              f"{missing} missing")
    head: dict[str, Tensor] = {}
    for prefix in present:
        head.update(_map_head_group(state, prefix))
    mapped = MappedState(segformer=segformer, head=head, ignored=ignored)
    _infer_architecture(mapped)
    return mapped


def _require(state: dict[str, Tensor], key: str, source_key: str) -> Tensor:
    if key not in state:
        raise CheckpointError(f"missing key {source_key!r}")
    return state[key]


def _infer_architecture(mapped: MappedState) -> None:
    s = mapped.segformer
    hidden, depths, patches, srs, mlps = [], [], [], [], []
    for i in range(4):
        proj = _require(s, f"segformer.stages.{i}.patch_embeddings.proj.weight",
                        f"backbone.patch_embed{i + 1}.proj.weight")
        hidden.append(int(proj.shape[0]))
        patches.append(int(proj.shape[-1]))
        blocks = {int(k.split(".")[4]) for k in s if k.startswith(f"segformer.stages.{i}.blocks.")}
        if not blocks or blocks != set(range(len(blocks))):
            raise CheckpointError(f"missing keys: the blocks of stage {i + 1} "
                                  f"(backbone.block{i + 1}.N.*) are absent or not numbered "
                                  f"0..N-1 (found {sorted(blocks)})")
        depths.append(len(blocks))
        sr = s.get(f"segformer.stages.{i}.blocks.0.attention.sequence_reduction."
                   "sequence_reduction.weight")
        srs.append(int(sr.shape[-1]) if sr is not None else 1)
        fc1 = _require(s, f"segformer.stages.{i}.blocks.0.mlp.fc1.weight",
                       f"backbone.block{i + 1}.0.mlp.fc1.weight")
        mlps.append(int(fc1.shape[0]) // hidden[-1])
    mapped.hidden_sizes, mapped.depths = tuple(hidden), tuple(depths)
    mapped.patch_sizes, mapped.sr_ratios, mapped.mlp_ratios = tuple(patches), tuple(srs), \
        tuple(mlps)
    mapped.embed_dim = int(_require(s, "decode_head.linear_projections.0.proj.weight",
                                    "decode_head.linear_c1.proj.weight").shape[0])
    mapped.num_classes = int(_require(s, "decode_head.classifier.weight",
                                      "decode_head.linear_pred.weight").shape[0])


def variant_name(hidden_sizes: tuple[int, ...], depths: tuple[int, ...]) -> str:
    """The published MiT size with these widths and depths, or "custom"."""
    for name, spec in MIT_VARIANTS.items():
        if spec.hidden_sizes == hidden_sizes and spec.depths == depths:
            return name
    return "custom"


def default_heads(hidden_sizes: tuple[int, ...]) -> tuple[int, ...] | None:
    """Attention heads cannot be read from weight shapes; MiT fixes them per width."""
    for name, spec in MIT_VARIANTS.items():
        if name != "tiny" and spec.hidden_sizes == hidden_sizes:
            return spec.num_heads
    return None


_TARGET_BLOCK = re.compile(r"segformer\.stages\.(\d)\.blocks\.(\d+)\.(.+)\.(weight|bias)")
_TARGET_PARTS = {v: k for k, v in _BLOCK_PARTS.items()}


def source_name(target: str) -> str:
    """The source (NVlabs/mmseg) key that feeds ``target``, for error messages."""
    if m := _TARGET_BLOCK.fullmatch(target):
        part = m[3]
        if part in ("attention.k_proj", "attention.v_proj"):
            source = f"attn.kv (the {part[10]} half)"
        else:
            source = _TARGET_PARTS.get(part, part)
        return f"backbone.block{int(m[1]) + 1}.{m[2]}.{source}.{m[4]}"
    patterns = [
        (r"segformer\.stages\.(\d)\.patch_embeddings\.proj\.(\w+)",
         "backbone.patch_embed{}.proj.{}"),
        (r"segformer\.stages\.(\d)\.patch_embeddings\.layer_norm\.(\w+)",
         "backbone.patch_embed{}.norm.{}"),
        (r"segformer\.stages\.(\d)\.layer_norm\.(\w+)", "backbone.norm{}.{}"),
        (r"decode_head\.linear_projections\.(\d)\.proj\.(\w+)", "decode_head.linear_c{}.proj.{}"),
    ]
    for pattern, template in patterns:
        if m := re.fullmatch(pattern, target):
            return template.format(int(m[1]) + 1, m[2])
    fixed = {"decode_head.linear_fuse.weight": "decode_head.linear_fuse.conv.weight",
             "decode_head.classifier.weight": "decode_head.linear_pred.weight",
             "decode_head.classifier.bias": "decode_head.linear_pred.bias"}
    if target in fixed:
        return fixed[target]
    if target.startswith("decode_head.batch_norm."):
        return "decode_head.linear_fuse.bn." + target.rsplit(".", 1)[1]
    for prefix, (head_target, _, _) in HEAD_GROUPS.items():
        if target.startswith(head_target + "."):
            return f"{prefix} ({target})"
    return target


def check_shapes(expected: dict[str, Tensor], mapped: dict[str, Tensor]) -> None:
    """CheckpointError naming source keys when ``mapped`` lacks or mis-shapes a tensor."""
    missing = sorted(source_name(k) for k in set(expected) - set(mapped))
    extra = sorted(source_name(k) for k in set(mapped) - set(expected))
    mismatched = [f"{source_name(k)} is {tuple(mapped[k].shape)}, the model expects "
                  f"{tuple(expected[k].shape)}"
                  for k in sorted(set(expected) & set(mapped))
                  if tuple(mapped[k].shape) != tuple(expected[k].shape)]
    problems = []
    if missing:
        problems.append(f"missing keys {missing[:6]}" + (f" (+{len(missing) - 6} more)"
                                                         if len(missing) > 6 else ""))
    if extra:
        problems.append(f"unexpected keys {extra[:6]}")
    if mismatched:
        problems.append(f"shape mismatches: {'; '.join(mismatched[:4])}")
    if problems:
        raise CheckpointError("; ".join(problems) + " (is it a complete SegFormer checkpoint "
                              "of one MiT size? --num-heads must match the training config)")
