"""Stage B with SAM2: the video predictor as a :class:`~ditta_ros.engine.types.MaskPropagator`,
and :class:`SAM2Teacher` / :func:`build_sam2_teacher` on top of it.

This module imports :mod:`ditta_ros.engine.teacher` (the algorithm); the reverse never
happens, so importing the algorithm never loads sam2 or hydra.

Everything goes through the predictor's public calls (``init_state``, ``reset_state``,
``add_new_points_or_box``, ``add_new_mask``, ``propagate_in_video``), with two small,
documented adaptations of how the clip reaches it:

* **Frames from memory.** ``init_state`` only reads a JPEG folder or an MP4 file. For the
  duration of that one call we put a loader in front of sam2's frame loader that hands our
  preprocessed tensor to the predictor when (and only when) it is given our clip object;
  any other caller's video path goes to sam2's own loader unchanged.
* **Features cached for the whole warm-up clip.** The predictor keeps the image features
  of the last visited frame only, but stage B revisits every frame (prompt search, resets,
  forward and backward passes). The inference state we hand back is a ``dict`` subclass
  whose cache entry accumulates instead of being replaced, so each frame's image encoder
  runs exactly once per clip. Cost: one frame's features per warm-up frame, dropped in
  :meth:`SAM2Propagator.release`.

Each clip is a :class:`SAM2Clip` handle returned by :meth:`SAM2Propagator.start` (as the
predictor itself returns an inference state): the propagator holds no clip of its own, so a
cancelled adaptation that is still unwinding can never release or reset a newer one's clip.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import threading
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ditta_ros.config import TeacherConfig
from ditta_ros.engine.precision import sam2_autocast_dtype
from ditta_ros.engine.teacher import PropagationTeacher
from ditta_ros.engine.types import ObjectMasks
from ditta_ros.errors import AdaptationError, CheckpointError, ConfigError, InputError

SAM2_MEAN = (0.485, 0.456, 0.406)
SAM2_STD = (0.229, 0.224, 0.225)

_LOADER_LOCK = threading.Lock()
logger = logging.getLogger(__name__)

# teacher.sam2_config file name -> the official checkpoint trained for it
_CHECKPOINTS = {"hiera_t": "hiera_tiny", "hiera_s": "hiera_small", "hiera_b+": "hiera_base_plus",
                "hiera_l": "hiera_large"}


def sam2_input(frame_bgr: np.ndarray, image_size: int) -> np.ndarray:
    """One frame as SAM2 sees it: (H, W, 3) uint8 BGR -> (3, S, S) float32.

    RGB, squashed to S x S with PIL bicubic (aspect not kept), /255, then normalised with
    ImageNet mean/std (ALGORITHM.md, "What SAM2 sees").
    """
    if frame_bgr.ndim != 3 or frame_bgr.shape[2] != 3 or frame_bgr.dtype != np.uint8:
        raise InputError(f"SAM2 frames must be (H, W, 3) uint8 BGR, got shape "
                         f"{frame_bgr.shape} dtype {frame_bgr.dtype}")
    rgb = Image.fromarray(np.ascontiguousarray(frame_bgr[:, :, ::-1]))
    resized = rgb.resize((image_size, image_size), Image.Resampling.BICUBIC)
    # /255 in float64 then float32, as sam2's own loader does.
    scaled = (np.asarray(resized, dtype=np.float64) / 255.0).astype(np.float32)  # (S, S, 3)
    mean = np.asarray(SAM2_MEAN, dtype=np.float32)
    std = np.asarray(SAM2_STD, dtype=np.float32)
    return np.ascontiguousarray(((scaled - mean) / std).transpose(2, 0, 1))  # (3, S, S)


class _InMemoryClip:
    """The object our loader recognises as "this clip" inside ``init_state``."""

    def __init__(self, images: torch.Tensor, height: int, width: int) -> None:
        self.images = images  # (T, 3, S, S) float32 on the compute device
        self.height = height
        self.width = width


class _ClipState(dict[str, Any]):
    """SAM2 inference state whose image-feature cache keeps every frame of the clip.

    The predictor replaces ``state["cached_features"]`` with a one-frame dict on every
    cache miss; here that assignment merges into the existing cache instead.
    """

    _CACHE_KEY = "cached_features"

    def __setitem__(self, key: Any, value: Any) -> None:
        if key == self._CACHE_KEY and key in self and isinstance(value, dict):
            dict.__getitem__(self, key).update(value)
            return
        super().__setitem__(key, value)


@contextlib.contextmanager
def _in_memory_loader(clip: _InMemoryClip) -> Iterator[None]:
    """While active, sam2's video predictor loads ``clip`` from memory (see module doc)."""
    import sam2.sam2_video_predictor as video_module

    with _LOADER_LOCK:
        original = video_module.load_video_frames

        def load(video_path: Any, **kwargs: Any) -> Any:
            if video_path is clip:
                return clip.images, clip.height, clip.width
            return original(video_path=video_path, **kwargs)

        video_module.load_video_frames = load
        try:
            yield
        finally:
            video_module.load_video_frames = original


def _silence_progress_bars() -> None:
    """Once per process: SAM2's ``propagate_in_video`` draws a tqdm bar on every call, and
    stage B calls it once per frame and pass (hundreds of bars per warm-up, flooding the
    node's log and the tools' progress output). The predictor module's ``tqdm`` is replaced
    by a disabled one; nothing else in sam2 changes."""
    import sam2.sam2_video_predictor as video_module
    from tqdm import tqdm

    if not getattr(video_module.tqdm, "_ditta_silent", False):
        silent: Any = functools.partial(tqdm, disable=True)
        silent._ditta_silent = True
        video_module.tqdm = silent


class SAM2Clip:
    """Handle of one clip loaded into a :class:`SAM2Propagator` (see the module doc)."""

    def __init__(self, state: _ClipState) -> None:
        self._state: _ClipState | None = state

    @property
    def released(self) -> bool:
        return self._state is None

    def state(self) -> _ClipState:
        if self._state is None:
            raise AdaptationError("SAM2 clip used after release(clip): start a new clip")
        return self._state

    def drop(self) -> None:
        self._state = None


class SAM2Propagator:
    """:class:`~ditta_ros.engine.types.MaskPropagator` on a ``SAM2VideoPredictor``.

    Runs under ``torch.inference_mode``; bfloat16 autocast on CUDA, float32 elsewhere, unless
    ``precision`` (ModelConfig.precision) asks for bf16 or fp16 autocast.
    Point prompts are (col, row) in original-frame pixels, label 1, with SAM2's coordinate
    normalisation (no +0.5). Masks are SAM2's logits at frame size, thresholded at > 0.
    """

    def __init__(self, predictor: Any, device: torch.device | str | None = None,
                 precision: str = "fp32") -> None:
        model_device = torch.device(predictor.device)
        if device is not None and not _same_device(torch.device(device), model_device):
            raise ConfigError(f"the SAM2 predictor lives on {model_device} but the teacher "
                              f"was asked to run on {device}; build it on that device")
        self.predictor = predictor
        self.device = model_device
        # ModelConfig.precision: bf16 on CUDA at fp32 (the paper), else its own dtype.
        self._autocast_dtype = sam2_autocast_dtype(precision, model_device)
        _silence_progress_bars()

    # -- MaskPropagator ------------------------------------------------------------------
    def start(self, frames: Sequence[np.ndarray]) -> SAM2Clip:
        if not frames:
            raise InputError("SAM2 needs at least one warm-up frame")
        height, width = frames[0].shape[:2]
        size = int(self.predictor.image_size)
        batch = np.stack([sam2_input(f, size) for f in frames])  # (T, 3, S, S)
        clip = _InMemoryClip(torch.from_numpy(batch).to(self.device), height, width)
        with self._context(), _in_memory_loader(clip):
            state = self.predictor.init_state(clip)
        return SAM2Clip(_ClipState(state))

    def reset(self, clip: SAM2Clip) -> None:
        with self._context():
            self.predictor.reset_state(clip.state())

    def add_point(self, clip: SAM2Clip, frame: int, object_id: int, row: int,
                  col: int) -> ObjectMasks:
        points = torch.tensor([[float(col), float(row)]], dtype=torch.float32)  # (1, 2) x, y
        labels = torch.tensor([1], dtype=torch.int32)
        with self._context():
            _, ids, logits = self.predictor.add_new_points_or_box(
                clip.state(), frame_idx=frame, obj_id=object_id, points=points,
                labels=labels, clear_old_points=True, normalize_coords=True)
        return _to_masks(ids, logits)

    def add_mask(self, clip: SAM2Clip, frame: int, object_id: int,
                 mask: np.ndarray) -> ObjectMasks:
        with self._context():
            _, ids, logits = self.predictor.add_new_mask(
                clip.state(), frame_idx=frame, obj_id=object_id,
                mask=torch.from_numpy(np.ascontiguousarray(mask, dtype=bool)))
        return _to_masks(ids, logits)

    def propagate(self, clip: SAM2Clip, frame: int, reverse: bool) -> ObjectMasks:
        target = frame - 1 if reverse else frame + 1
        found: ObjectMasks | None = None
        with self._context():
            # SAM2's own propagation, one frame at a time: the first output is ``frame``
            # again, the second is the next frame.
            for index, ids, logits in self.predictor.propagate_in_video(
                    clip.state(), start_frame_idx=frame, max_frame_num_to_track=1,
                    reverse=reverse):
                if index == target:
                    found = _to_masks(ids, logits)
        if found is None:
            raise AdaptationError(f"SAM2 did not propagate from frame {frame} to {target}")
        return found

    def release(self, clip: SAM2Clip) -> None:
        clip.drop()

    # -- helpers -------------------------------------------------------------------------
    @contextlib.contextmanager
    def _context(self) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.inference_mode())
            if self._autocast_dtype is not None:
                stack.enter_context(torch.autocast(self.device.type, dtype=self._autocast_dtype))
            yield


class SAM2Teacher(PropagationTeacher):
    """Stage B with SAM2's video predictor as the propagator (the paper's teacher).

    predictor: a ``sam2.sam2_video_predictor.SAM2VideoPredictor`` (see
    :func:`build_sam2_teacher`); device: where SAM2 runs, None: the predictor's device.
    """

    def __init__(self, predictor: object, config: TeacherConfig,
                 device: torch.device | str | None = None,
                 num_classes: int | None = None, precision: str = "fp32") -> None:
        super().__init__(SAM2Propagator(predictor, device, precision), config, num_classes)


def build_sam2_teacher(config: TeacherConfig, device: torch.device | str | None = None,
                       num_classes: int | None = None,
                       precision: str = "fp32") -> SAM2Teacher:
    """SAM2 teacher from ``config``: local checkpoint, or seeded random weights when
    ``config.sam2_checkpoint`` is empty. Never downloads; raises CheckpointError naming the
    path and the fix. ``config.device`` wins over ``device`` when set. ``precision``:
    ModelConfig.precision (SAM2's autocast, see :mod:`ditta_ros.engine.precision`)."""
    where = teacher_device(config, device)
    predictor = build_sam2_predictor(config, where)
    return SAM2Teacher(predictor, config, where, num_classes, precision)


def _to_masks(ids: Sequence[int], logits: torch.Tensor) -> ObjectMasks:
    """SAM2 output (K, 1, H, W) logits at frame size -> ObjectMasks (logit > 0)."""
    masks = (logits > 0).squeeze(1).cpu().numpy()  # (K, H, W) bool
    return ObjectMasks(tuple(int(i) for i in ids), masks)


def _same_device(a: torch.device, b: torch.device) -> bool:
    if a.type != b.type:
        return False
    if a.type != "cuda":
        return True
    current = torch.cuda.current_device()
    return (a.index if a.index is not None else current) == (
        b.index if b.index is not None else current)


def teacher_device(config: TeacherConfig, device: torch.device | str | None) -> torch.device:
    """SAM2's device: ``config.device`` if set, else ``device``, else the CPU."""
    if config.device:
        return torch.device(config.device)
    return torch.device(device) if device is not None else torch.device("cpu")


def build_sam2_predictor(config: TeacherConfig, device: torch.device | str) -> Any:
    """SAM2's video predictor via ``sam2.build_sam.build_sam2_video_predictor``.

    ``config.sam2_checkpoint`` is a local ``.pt`` path; empty gives random weights drawn
    after ``torch.manual_seed(config.seed)`` (the global RNG is left as it was). The image
    size is overridden to ``config.image_size``; SAM2's default post-processing is kept.
    """
    from hydra.errors import MissingConfigException
    from sam2.build_sam import build_sam2_video_predictor

    checkpoint: str | None = None
    if config.sam2_checkpoint:
        path = Path(config.sam2_checkpoint).expanduser()
        if not path.is_file():
            raise CheckpointError(
                f"SAM2 checkpoint {path} does not exist. Download the checkpoint that matches "
                f"teacher.sam2_config {config.sam2_config!r} "
                f"({matching_checkpoint(config.sam2_config)}) on a machine with internet "
                f"access, copy it here and set teacher.sam2_checkpoint to its path (empty = "
                f"random weights, tests only).")
        checkpoint = str(path)
    _quiet_missing_extension()
    overrides = [f"++model.image_size={config.image_size}"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        try:
            predictor = build_sam2_video_predictor(
                config.sam2_config, checkpoint, device=str(torch.device(device)),
                hydra_overrides_extra=overrides)
        except MissingConfigException as exc:
            raise ConfigError(
                f"teacher.sam2_config {config.sam2_config!r} is not a config of the installed "
                f"sam2 package (e.g. configs/sam2.1/sam2.1_hiera_l.yaml)") from exc
        except Exception as exc:  # sam2 raises bare RuntimeError/KeyError/unpickling errors
            if checkpoint is None:
                raise
            raise CheckpointError(
                f"SAM2 checkpoint {checkpoint} could not be loaded into "
                f"{config.sam2_config} ({type(exc).__name__}: {exc}). Check that the file is "
                f"a complete SAM2 checkpoint for that config (a dict with a 'model' state "
                f"dict) or pick the matching teacher.sam2_config.") from exc
    return predictor


def matching_checkpoint(sam2_config: str) -> str:
    """The official checkpoint file for a SAM2 config name, e.g. 'configs/sam2.1/
    sam2.1_hiera_s.yaml' -> 'sam2.1_hiera_small.pt'; a hint for unknown names."""
    stem = Path(sam2_config).name.removesuffix(".yaml")
    for short, long in _CHECKPOINTS.items():
        if stem.endswith(short):
            return stem[: -len(short)] + long + ".pt"
    return "the .pt file published with that config"


_EXTENSION_NOTED = threading.Event()


def _quiet_missing_extension() -> None:
    """sam2 without its compiled CUDA extension (``sam2._C``, e.g. a pip install on a CPU
    machine) warns in several lines each time a mask's holes would be filled. Said once, in
    one line, here; that one warning (and only it) is filtered from then on."""
    if _EXTENSION_NOTED.is_set() or importlib.util.find_spec("sam2._C") is not None:
        return
    _EXTENSION_NOTED.set()
    warnings.filterwarnings("ignore", message=r"(?s).*Skipping the post-processing step",
                            category=UserWarning)
    logger.info("sam2's CUDA extension (sam2._C) is not built: SAM2 skips filling small holes "
                "in its masks (results are unaffected in most cases)")
