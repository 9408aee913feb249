"""Helpers for the model and checkpoint tests: tiny configs and the inverse key mapping.

``to_nvlabs_state`` writes a DittaModel's weights under the NVlabs-SegFormer/CFFM key names
(the inverse of ditta_ros.engine.mmseg), written independently here so that a conversion
test checks the mapping rather than reusing it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ditta_ros.config import ModelConfig
from ditta_ros.engine.model import DittaModel

TINY_HEADS = "1,1,2,4"
NUM_CLASSES = 5
EMBED_DIM = 32


def tiny_config(**changes: object) -> ModelConfig:
    values: dict[str, object] = {"variant": "tiny", "num_classes": NUM_CLASSES,
                                 "embed_dim": EMBED_DIM, "seed": 3, "dropout": 0.0,
                                 "drop_path": 0.0}
    values.update(changes)
    return ModelConfig(**values)  # type: ignore[arg-type]


def perturb_head(model: DittaModel, seed: int = 11) -> None:
    """Give the add-on and projection head weights no seed would produce, and non-trivial
    BN running statistics, so a test can tell carried-over tensors from re-initialised ones."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in list(model.addon.parameters()) + list(model.projection.parameters()):
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
        bn = model.iss.model.decode_head.batch_norm
        bn.running_mean.copy_(torch.randn(bn.running_mean.shape, generator=gen) * 0.1)
        bn.running_var.copy_(torch.rand(bn.running_var.shape, generator=gen) + 0.5)


_BLOCK = {
    "layernorm_before": "norm1", "attention.q_proj": "attn.q", "attention.o_proj": "attn.proj",
    "attention.sequence_reduction.sequence_reduction": "attn.sr",
    "attention.sequence_reduction.layer_norm": "attn.norm", "layernorm_after": "norm2",
    "mlp.fc1": "mlp.fc1", "mlp.dwconv.dwconv": "mlp.dwconv.dwconv", "mlp.fc2": "mlp.fc2",
}


def to_nvlabs_state(model: DittaModel, with_head: bool = True,
                    head_as_conv: bool = False) -> dict[str, Tensor]:
    """The model's weights under NVlabs/CFFM names (+ mmseg's unused conv_seg).

    The add-on MLPs become ``query_layer.{0,2}`` / ``key_layer.{0,2}`` (Linear, or 1x1 conv
    weights when ``head_as_conv``), the projection head ``proj_feat.{0,2,4}`` (1x1 conv).
    """
    hf = model.iss.model.state_dict()
    out: dict[str, Tensor] = {}
    for i in range(4):
        s = f"segformer.stages.{i}"
        n = i + 1
        for part in ("weight", "bias"):
            out[f"backbone.patch_embed{n}.proj.{part}"] = hf[f"{s}.patch_embeddings.proj.{part}"]
            out[f"backbone.patch_embed{n}.norm.{part}"] = \
                hf[f"{s}.patch_embeddings.layer_norm.{part}"]
            out[f"backbone.norm{n}.{part}"] = hf[f"{s}.layer_norm.{part}"]
            out[f"decode_head.linear_c{n}.proj.{part}"] = \
                hf[f"decode_head.linear_projections.{i}.proj.{part}"]
        depth = len({k.split(".")[4] for k in hf if k.startswith(f"{s}.blocks.")})
        for j in range(depth):
            b = f"{s}.blocks.{j}"
            for part in ("weight", "bias"):
                for ours, theirs in _BLOCK.items():
                    key = f"{b}.{ours}.{part}"
                    if key in hf:
                        out[f"backbone.block{n}.{j}.{theirs}.{part}"] = hf[key]
                out[f"backbone.block{n}.{j}.attn.kv.{part}"] = torch.cat(
                    [hf[f"{b}.attention.k_proj.{part}"], hf[f"{b}.attention.v_proj.{part}"]])
    out["decode_head.linear_fuse.conv.weight"] = hf["decode_head.linear_fuse.weight"]
    for part in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
        out[f"decode_head.linear_fuse.bn.{part}"] = hf[f"decode_head.batch_norm.{part}"]
    out["decode_head.linear_pred.weight"] = hf["decode_head.classifier.weight"]
    out["decode_head.linear_pred.bias"] = hf["decode_head.classifier.bias"]
    out["decode_head.conv_seg.weight"] = torch.zeros_like(hf["decode_head.classifier.weight"])
    out["decode_head.conv_seg.bias"] = torch.zeros_like(hf["decode_head.classifier.bias"])
    if with_head:
        for name, mlp in (("query_layer", model.addon.mlp_q), ("key_layer", model.addon.mlp_k)):
            for index in (0, 2):
                weight = mlp[index].weight.detach()
                out[f"decode_head.{name}.{index}.weight"] = (
                    weight[:, :, None, None] if head_as_conv else weight)
                out[f"decode_head.{name}.{index}.bias"] = mlp[index].bias.detach()
        for index in (0, 2, 4):
            out[f"decode_head.proj_feat.{index}.weight"] = model.projection[index].weight.detach()
            out[f"decode_head.proj_feat.{index}.bias"] = model.projection[index].bias.detach()
    return {k: v.clone() for k, v in out.items()}


def outputs(model: DittaModel, x: Tensor) -> dict[str, Tensor]:
    """Every output of the model on a 2-frame clip, eval mode: F, L, add-on, projection."""
    model.eval()
    with torch.no_grad():
        feats, logits = model.iss.forward_features(x)
        addon = model.addon(feats[1:], feats[:1], logits[:1])
        proj = model.projection(feats)
    return {"features": feats, "logits": logits, "addon": addon, "projection": proj}
