"""Building the model from a checkpoint, saving it, and saving/loading an adaptation.

Model sources (``ModelConfig.checkpoint``), local files only, never a download:

- ``""``: seeded random weights of ``ModelConfig.variant`` (tests and demos);
- a ditta_ros model file (``.pt``, written by :func:`save_model` or
  ``ditta-convert-checkpoint``): a dict with ``format``/``version`` tags, the SegFormer config,
  class names, the full state dict (ISS + add-on + projection head) and the head seed;
- a Hugging Face SegFormer directory (``config.json`` + weights): loaded with
  ``local_files_only``; its DiTTA head gets PyTorch's default init after an explicit seed.

Every failure raises :class:`CheckpointError` naming the path and the fix.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import SegformerConfig, SegformerForSemanticSegmentation

from ditta_ros.config import ModelConfig
from ditta_ros.engine.mmseg import (
    check_shapes,
    default_heads,
    map_mmseg_state,
    strip_wrappers,
    variant_name,
)
from ditta_ros.engine.model import (
    DEFAULT_WINDOW_RADIUS,
    DittaModel,
    ProjectionHead,
    SegformerISS,
    TemporalAddon,
    make_segformer_config,
    segformer_config,
)
from ditta_ros.errors import CheckpointError

MODEL_FORMAT = "ditta_ros.model"
MODEL_VERSION = 1
ADAPTATION_FORMAT = "ditta_ros.adaptation"
ADAPTATION_VERSION = 1

_CONVERT_HINT = ("if it is the paper's (mmseg/NVlabs-style) checkpoint, convert it first with "
                 "`ditta-convert-checkpoint SRC DST`")


def resolve_device(device: torch.device | str | None, fallback: str) -> torch.device:
    """``device`` if given, else ``fallback`` (a ModelConfig.device string)."""
    try:
        return torch.device(device if device is not None else fallback)
    except RuntimeError as exc:
        raise CheckpointError(f"invalid torch device {device or fallback!r}: {exc}") from exc


def build_model(config: ModelConfig, device: torch.device | str | None = None, *,
                window_radius: int = DEFAULT_WINDOW_RADIUS) -> DittaModel:
    """The DiTTA model described by ``config``, in eval mode, on ``device``.

    ``device`` defaults to ``config.device``; ``window_radius`` is the add-on's r
    (FusionConfig.window_radius). Raises CheckpointError naming the path and the fix.
    """
    target = resolve_device(device, config.device)
    source = config.checkpoint
    if source == "":
        model = _random_model(config, window_radius)
    else:
        path = Path(source).expanduser()
        if path.is_dir():
            model = _from_hf_directory(path, config, window_radius)
        elif path.is_file():
            model = _from_model_file(path, config, window_radius)
        else:
            raise CheckpointError(
                f"model checkpoint {str(path)!r} does not exist: set ModelConfig.checkpoint "
                "(ROS parameter model.checkpoint) to a local ditta_ros .pt file or a Hugging "
                "Face SegFormer directory, or to '' for random weights")
    return model.to(target).eval()


def _seeded_head(embed_dim: int, seed: int, radius: int) -> tuple[TemporalAddon, ProjectionHead]:
    """Add-on and projection head with PyTorch's default init after an explicit seed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        addon = TemporalAddon(embed_dim, radius)
        projection = ProjectionHead(embed_dim)
    return addon, projection


def _assemble(segformer: SegformerForSemanticSegmentation, config: ModelConfig, radius: int,
              class_names: list[str] | None, head_seed: int | None) -> DittaModel:
    """ISS wrapper + a head initialised with ``head_seed`` (default: ``config.seed``)."""
    iss = SegformerISS(segformer, dropout=config.dropout, drop_path=config.drop_path,
                       attention=config.attention_implementation)
    seed = config.seed if head_seed is None else head_seed
    addon, projection = _seeded_head(iss.embed_dim, seed, radius)
    return DittaModel(iss, addon, projection, class_names=class_names, head_seed=seed)


def _random_model(config: ModelConfig, radius: int) -> DittaModel:
    hf_config = segformer_config(config.variant, config.num_classes, config.embed_dim)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        segformer = SegformerForSemanticSegmentation(hf_config)
    return _assemble(segformer, config, radius, None, None)


def _class_names_of(hf_config: Any) -> list[str] | None:
    id2label = getattr(hf_config, "id2label", None) or {}
    names = [str(id2label.get(i, id2label.get(str(i), ""))) for i in range(hf_config.num_labels)]
    if all(name == f"LABEL_{i}" for i, name in enumerate(names)) or "" in names:
        return None  # transformers' placeholders, not real names
    return names


def _from_hf_directory(path: Path, config: ModelConfig, radius: int) -> DittaModel:
    if not (path / "config.json").is_file():
        raise CheckpointError(
            f"{str(path)!r} is a directory without config.json: give a Hugging Face SegFormer "
            "directory (as written by save_pretrained) or a ditta_ros .pt file")
    try:
        loaded: Any = SegformerForSemanticSegmentation.from_pretrained(
            # float32 whatever the files hold: adaptation trains in float32 (transformers
            # would otherwise keep a float16 checkpoint in float16)
            str(path), local_files_only=True, output_loading_info=True, dtype=torch.float32)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise CheckpointError(
            f"cannot load the Hugging Face SegFormer directory {str(path)!r}: "
            f"{_first_line(exc)}. Check that "
            "it holds config.json (model_type segformer) and model.safetensors or "
            "pytorch_model.bin") from exc
    segformer, info = loaded
    problems = [f"{kind} {sorted(info.get(kind, []))[:5]}"
                for kind in ("missing_keys", "mismatched_keys") if info.get(kind)]
    if problems:
        raise CheckpointError(
            f"the Hugging Face checkpoint {str(path)!r} does not hold a complete SegFormer "
            f"segmentation model ({'; '.join(problems)}); a backbone-only (mit-bX) "
            "checkpoint needs a trained decode head: use a semantic-segmentation checkpoint")
    return _assemble(segformer, config, radius, _class_names_of(segformer.config), None)


def _first_line(exc: BaseException) -> str:
    """An exception as one line (messages end up on one stderr line or in a ROS log)."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


def _torch_load(path: Path, what: str) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a file that is not a checkpoint
        raise CheckpointError(
            f"{str(path)!r} is not a readable torch {what} file ({_first_line(exc)}); "
            "give a file written by "
            "ditta_ros or torch.save") from exc


def _from_model_file(path: Path, config: ModelConfig, radius: int) -> DittaModel:
    blob = _torch_load(path, "checkpoint")
    if not isinstance(blob, dict) or blob.get("format") != MODEL_FORMAT:
        raise CheckpointError(f"{str(path)!r} is not a ditta_ros model checkpoint; "
                              f"{_CONVERT_HINT}")
    if blob.get("version") != MODEL_VERSION:
        raise CheckpointError(f"{str(path)!r} has ditta_ros model format version "
                              f"{blob.get('version')!r}; this ditta_ros reads version "
                              f"{MODEL_VERSION}: convert it again with this version")
    try:
        hf_config = SegformerConfig.from_dict(dict(blob["segformer_config"]))
        with torch.device("meta"):  # no random init: every tensor comes from the file
            segformer = SegformerForSemanticSegmentation(hf_config)
        state: dict[str, torch.Tensor] = dict(blob["state_dict"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{str(path)!r} is a damaged ditta_ros model checkpoint "
                              f"({_first_line(exc)}); write it again") from exc
    iss_state = {k: v for k, v in state.items() if k.startswith(_ISS_PREFIX)}
    head_state = {k: v for k, v in state.items() if k.startswith(("addon.", "projection."))}
    other = sorted(set(state) - set(iss_state) - set(head_state))
    expected = {_ISS_PREFIX + k: v for k, v in segformer.state_dict().items()}
    _check_fit(expected, iss_state, other, path)
    segformer.load_state_dict({k[len(_ISS_PREFIX):]: v for k, v in iss_state.items()},
                              assign=True)
    left = [n for n, t in [*segformer.named_parameters(), *segformer.named_buffers()]
            if t.is_meta]
    if left:
        raise CheckpointError(f"{str(path)!r} leaves tensors without values: {left[:5]}; "
                              "write it again (ditta-convert-checkpoint or save_model)")
    head_seed = blob.get("head_seed")
    names = blob.get("class_names")
    names = [str(n) for n in names] if isinstance(names, (list, tuple)) else None
    model = _assemble(segformer, config, radius, names,
                      head_seed if isinstance(head_seed, int) else None)
    expected_head = {k: v for k, v in model.adaptation_state().items()
                     if not k.startswith("decoder.")}
    _check_fit(expected_head, head_state, [], path)
    model.load_adaptation_state({**model.adaptation_state(), **head_state})
    model.head_seed = head_seed if isinstance(head_seed, int) else None
    return model


_ISS_PREFIX = "iss.model."


def _check_fit(expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor],
               unexpected: list[str], path: Path) -> None:
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(unexpected) | (set(state) - set(expected)))
    mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
                  for k in sorted(set(expected) & set(state))
                  if state[k].shape != expected[k].shape]
    if missing or unexpected or mismatched:
        raise CheckpointError(
            f"{str(path)!r} does not fit its own SegFormer config: missing keys "
            f"{missing[:5]}, unexpected keys {unexpected[:5]}, shape mismatches "
            f"{mismatched[:5]}; write it again (ditta-convert-checkpoint or save_model)")


def save_model(model: DittaModel, path: Path | str) -> None:
    """Write ``model`` (ISS + add-on + projection head) as a ditta_ros model checkpoint."""
    blob = {
        "format": MODEL_FORMAT, "version": MODEL_VERSION,
        "segformer_config": model.iss.config.to_dict(),
        "class_names": list(model.class_names) if model.class_names is not None else None,
        "head_seed": model.head_seed,
        "state_dict": {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()},
    }
    _atomic_save(blob, Path(path))


def _atomic_save(blob: dict[str, Any], path: Path) -> None:
    """torch.save into a temporary file beside ``path``, then rename over it."""
    path = path.expanduser()
    if not path.parent.is_dir():
        raise CheckpointError(f"cannot write {str(path)!r}: directory {str(path.parent)!r} "
                              "does not exist; create it first")
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(blob, stream)
        os.replace(tmp, path)
    except OSError as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise CheckpointError(f"cannot write {str(path)!r}: {exc}") from exc


def save_adaptation(model: DittaModel, path: Path | str, meta: Mapping[str, Any]) -> None:
    """Save what adaptation changed (:meth:`DittaModel.adaptation_state`) with the base
    model's identity. ``meta`` must hold plain values (str, int, float, bool, None, lists,
    dicts) so the file loads with ``weights_only``."""
    blob = {
        "format": ADAPTATION_FORMAT, "version": ADAPTATION_VERSION,
        "identity": model.identity, "meta": dict(meta),
        "state": {k: v.to("cpu") for k, v in model.adaptation_state().items()},
    }
    _atomic_save(blob, Path(path))


def load_adaptation(model: DittaModel, path: Path | str) -> dict[str, Any]:
    """Load an adaptation into ``model`` (in place) and return its ``meta``.

    Raises CheckpointError when the file is missing or not an adaptation file, or when it
    was made for another base model (identities differ); ``model`` is unchanged then.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"adaptation file {str(path)!r} does not exist: give a file "
                              "written by save_adaptation (~/save_adaptation)")
    blob = _torch_load(path, "adaptation")
    if not isinstance(blob, dict) or blob.get("format") != ADAPTATION_FORMAT:
        raise CheckpointError(f"{str(path)!r} is not a ditta_ros adaptation file; give a "
                              "file written by save_adaptation (~/save_adaptation)")
    if blob.get("version") != ADAPTATION_VERSION:
        raise CheckpointError(f"{str(path)!r} has adaptation format version "
                              f"{blob.get('version')!r}; this ditta_ros reads version "
                              f"{ADAPTATION_VERSION}: adapt again and save")
    if blob.get("identity") != model.identity:
        raise CheckpointError(
            f"adaptation {str(path)!r} was made for base model {blob.get('identity')!r}, but "
            f"the loaded model is {model.identity!r}: load the checkpoint it was adapted "
            "from, or adapt this model again")
    try:
        model.load_adaptation_state(blob["state"])
    except CheckpointError as exc:
        raise CheckpointError(f"{str(path)!r}: {exc}") from exc
    meta = blob.get("meta", {})
    return dict(meta) if isinstance(meta, dict) else {}


@dataclass(frozen=True)
class ConversionReport:
    """What :func:`convert_mmseg_checkpoint` did."""

    src: str
    dst: str
    variant: str                     # b0..b5, or "custom"
    hidden_sizes: tuple[int, ...]
    depths: tuple[int, ...]
    num_heads: tuple[int, ...]
    num_classes: int
    embed_dim: int
    tensors: int                     # source tensors converted
    ignored: tuple[str, ...]         # source keys dropped on purpose (unused conv_seg)
    head_from_checkpoint: bool       # add-on + projection head carried over
    head_seed: int | None            # the seed of the head when it was initialised here
    class_names: tuple[str, ...] | None
    identity: str

    def summary(self) -> str:
        head = ("DiTTA head (MLP_q, MLP_k, projection) carried over from the checkpoint"
                if self.head_from_checkpoint else
                f"the checkpoint has no DiTTA head: initialised with seed {self.head_seed}")
        lines = [
            f"converted {self.src} -> {self.dst}",
            f"  SegFormer MiT-{self.variant}: widths {list(self.hidden_sizes)}, depths "
            f"{list(self.depths)}, heads {list(self.num_heads)}; decoder width "
            f"{self.embed_dim}; {self.num_classes} classes"
            + ("" if self.class_names is None else " (names included)"),
            f"  {self.tensors} tensors converted; ignored {list(self.ignored) or 'nothing'}",
            f"  {head}",
            f"  model identity {self.identity}",
        ]
        return "\n".join(lines)


def _source_state(blob: Any, path: Path) -> dict[str, torch.Tensor]:
    state = blob.get("state_dict", blob) if isinstance(blob, dict) else None
    if not isinstance(state, dict) or not state or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise CheckpointError(f"{str(path)!r} holds no state dict (expected a dict of tensors, "
                              "or one under 'state_dict'): is it the ISS model checkpoint?")
    return state


def _meta_class_names(blob: Any) -> list[str] | None:
    meta = blob.get("meta") if isinstance(blob, dict) else None
    classes = meta.get("CLASSES") if isinstance(meta, dict) else None
    if isinstance(classes, (list, tuple)) and all(isinstance(c, str) for c in classes):
        return list(classes)
    return None


def convert_mmseg_checkpoint(src: Path | str, dst: Path | str, *,
                             num_heads: tuple[int, ...] | None = None,
                             class_names: list[str] | None = None, seed: int = 0,
                             trusted: bool = False) -> ConversionReport:
    """Convert the paper's ISS checkpoint (NVlabs/CFFM/mmseg keys) into a ditta_ros model file.

    The MiT size, decoder width and class count come from the tensor shapes; ``num_heads``
    only for widths that are no published MiT size. Class names come from ``class_names``,
    else from the checkpoint's ``meta.CLASSES``. Without the DiTTA add-on keys the head is
    initialised with ``seed``. ``trusted`` loads with full pickle (only for files you trust:
    some mmseg checkpoints carry objects that the safe loader refuses).
    Raises CheckpointError (missing file, not a checkpoint, unknown or missing keys, shape
    mismatches), always naming ``src``.
    """
    src, dst = Path(src).expanduser(), Path(dst).expanduser()
    if not src.is_file():
        raise CheckpointError(f"source checkpoint {str(src)!r} does not exist: give the path "
                              "of the ISS model checkpoint (.pth)")
    if trusted:
        try:
            blob = torch.load(src, map_location="cpu", weights_only=False)
        except Exception as exc:
            raise CheckpointError(f"{str(src)!r} is not a readable torch file: "
                                  f"{_first_line(exc)}") from exc
    else:
        blob = _torch_load(src, "checkpoint (if it is one you trust, retry with --trusted)")
    try:
        report = _convert(blob, src, dst, num_heads, class_names, seed)
    except CheckpointError as exc:
        message = str(exc)
        if str(src) not in message:
            message = f"{str(src)!r}: {message}"
        raise CheckpointError(message) from exc
    return report


def _convert(blob: Any, src: Path, dst: Path, num_heads: tuple[int, ...] | None,
             class_names: list[str] | None, seed: int) -> ConversionReport:
    state = _source_state(blob, src)
    mapped = map_mmseg_state(state)
    heads = tuple(num_heads) if num_heads is not None else default_heads(mapped.hidden_sizes)
    if heads is None:
        raise CheckpointError(
            f"widths {list(mapped.hidden_sizes)} are no published MiT size, so the number of "
            "attention heads per stage is unknown: give it (--num-heads, e.g. 1,2,5,8)")
    if len(heads) != 4 or any(h <= 0 or w % h
                              for h, w in zip(heads, mapped.hidden_sizes, strict=True)):
        raise CheckpointError(f"num_heads {list(heads)} must be 4 positive numbers dividing "
                              f"the widths {list(mapped.hidden_sizes)}")
    names = class_names if class_names is not None else _meta_class_names(blob)
    if names is not None and len(names) != mapped.num_classes:
        raise CheckpointError(f"{len(names)} class names given, but the checkpoint has "
                              f"{mapped.num_classes} classes")
    hf_config = make_segformer_config(
        mapped.hidden_sizes, mapped.depths, heads, mapped.sr_ratios, mapped.mlp_ratios,
        mapped.patch_sizes, mapped.embed_dim, mapped.num_classes)
    if names is not None:
        hf_config.id2label = dict(enumerate(names))
        hf_config.label2id = {n: i for i, n in enumerate(names)}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        segformer = SegformerForSemanticSegmentation(hf_config)
    expected = segformer.state_dict()
    bn_count = "decode_head.batch_norm.num_batches_tracked"
    if bn_count not in mapped.segformer and bn_count in expected:
        mapped.segformer[bn_count] = torch.zeros_like(expected[bn_count])  # older mmcv files
    check_shapes(expected, mapped.segformer)
    segformer.load_state_dict(mapped.segformer)
    model_config = ModelConfig(seed=seed, dropout=0.0, drop_path=0.0)
    model = _assemble(segformer, model_config, DEFAULT_WINDOW_RADIUS, names, None)
    if mapped.head:
        expected_head = {k: v for k, v in model.adaptation_state().items()
                         if not k.startswith("decoder.")}
        reshaped = _reshape_head(mapped.head, expected_head)
        check_shapes(expected_head, reshaped)
        model.load_adaptation_state({**model.adaptation_state(), **reshaped})
        model.head_seed = None
    save_model(model, dst)
    return ConversionReport(
        src=str(src), dst=str(dst),
        variant=variant_name(mapped.hidden_sizes, mapped.depths),
        hidden_sizes=mapped.hidden_sizes, depths=mapped.depths, num_heads=heads,
        num_classes=mapped.num_classes, embed_dim=mapped.embed_dim,
        tensors=len(strip_wrappers(state)) - len(mapped.ignored), ignored=tuple(mapped.ignored),
        head_from_checkpoint=bool(mapped.head), head_seed=model.head_seed,
        class_names=tuple(names) if names is not None else None, identity=model.identity)


def _reshape_head(head: dict[str, torch.Tensor],
                  expected: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Linear (D, D) <-> 1x1 conv (D, D, 1, 1): same numbers, other shape."""
    out: dict[str, torch.Tensor] = {}
    for key, value in head.items():
        target = expected.get(key)
        if (target is not None and value.shape != target.shape
                and value.numel() == target.numel() and value.shape[:2] == target.shape[:2]):
            value = value.reshape(target.shape)
        out[key] = value
    return out
