"""Compute precision (``ModelConfig.precision``): which parts run under autocast, and how.

fp32 runs everything in float32. bf16 and fp16 run the ISS network, the temporal add-on,
SAM2 (stage B) and the stage C forward passes under ``torch.autocast`` with that dtype;
weights stay float32 (the optimiser updates float32 master weights). The classifier, the
last layer, runs in float32 from the bfloat16/float16 features, so the logits are float32
(a bf16 logit has 8 significant bits: enough to flip near-tie labels); everything that
decides something is taken in float32 from them: the losses and their reductions, stage
A's labels and reliabilities, stage D's upsampling, softmax, reliabilities and fusion.

SAM2 on CUDA runs under bfloat16 autocast also at fp32, as the paper's code does
(ALGORITHM.md, stage B); fp16 gives it float16 there.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from typing import ContextManager

import torch

from ditta_ros.errors import ConfigError

logger = logging.getLogger(__name__)

# CPU flags (/proc/cpuinfo: "flags" on x86, "Features" on Arm) of native units per dtype:
# AVX-512 BF16 and AMX on x86, the BF16 extension on Arm; AVX-512 FP16 / AMX-FP16, and Arm's
# half-precision arithmetic.
NATIVE_CPU_FLAGS: dict[torch.dtype, frozenset[str]] = {
    torch.bfloat16: frozenset({"avx512_bf16", "amx_bf16", "bf16"}),
    torch.float16: frozenset({"avx512_fp16", "amx_fp16", "fphp", "asimdhp"}),
}

AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {
    "fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16,
}


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a precision setting; None for fp32."""
    if precision not in AUTOCAST_DTYPES:
        raise ConfigError(f"ModelConfig.precision = {precision!r} is not one of "
                          f"{sorted(AUTOCAST_DTYPES)}")
    return AUTOCAST_DTYPES[precision]


def check_precision(precision: str, device: torch.device | str) -> None:
    """ConfigError naming the setting when ``device`` cannot run ``precision``."""
    dtype = autocast_dtype(precision)
    dev = torch.device(device)
    if dtype is None:
        return
    if not torch.amp.is_autocast_available(dev.type):
        raise ConfigError(f"ModelConfig.precision = {precision!r} needs autocast, which torch "
                          f"does not offer on {dev.type}; set precision to fp32")
    if dtype is torch.bfloat16 and dev.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"ModelConfig.precision = 'bf16': the GPU {dev} has no bfloat16 "
                          "support; set precision to fp16 or fp32")
    if dev.type == "cpu" and cpu_has_native_units(dtype) is False:
        _warn_emulated(precision, dtype)


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str] | None:
    """This CPU's feature flags from /proc/cpuinfo; None where there is no such file."""
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    flags.update(value.split())
    except OSError:
        return None
    return frozenset(flags)


def cpu_has_native_units(dtype: torch.dtype) -> bool | None:
    """Whether this CPU computes ``dtype`` natively (:data:`NATIVE_CPU_FLAGS`); None when
    unknown (no /proc/cpuinfo, or a dtype without a flag list)."""
    flags = cpu_flags()
    wanted = NATIVE_CPU_FLAGS.get(dtype)
    if flags is None or wanted is None:
        return None
    return bool(flags & wanted)


@functools.cache
def _warn_emulated(precision: str, dtype: torch.dtype) -> None:
    # Once per process and precision: every predictor and adaptation checks its precision.
    logger.warning(
        "model.precision = %r on a CPU without %s units (none of %s in /proc/cpuinfo): "
        "torch emulates it, many times slower than fp32 (BENCHMARKS.md: a B0 frame 8x; a B5 "
        "frame did not finish in 45 min, its 1x1 convolutions fall back to a scalar loop). "
        "Set model.precision to fp32 on this machine.", precision, precision,
        "/".join(sorted(NATIVE_CPU_FLAGS[dtype])))


def autocast(device: torch.device | str, precision: str) -> ContextManager[object]:
    """Autocast for the network parts at ``precision`` (a no-op at fp32)."""
    dtype = autocast_dtype(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def sam2_autocast_dtype(precision: str, device: torch.device | str) -> torch.dtype | None:
    """SAM2's autocast dtype: bfloat16 on CUDA at fp32 (the paper's setting), else the
    precision's own dtype."""
    dtype = autocast_dtype(precision)
    if dtype is None and torch.device(device).type == "cuda":
        return torch.bfloat16
    return dtype
