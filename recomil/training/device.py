"""Device and precision selection (``amp: auto|bf16|fp16|off``); nothing assumes a GPU."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch


def pick_device() -> torch.device:
    """CUDA when present, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices in hardware (AVX512-BF16 or AMX), where bf16
    autocast makes a training step about 1.5x faster (benchmarks/model_step.md). Without it bf16 is
    emulated and slower than float32."""
    flags = _cpu_flags()
    if not flags & {"avx512_bf16", "amx_bf16"}:
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


# Below this median number of high-scale patches per training bag, bf16 autocast on a CPU costs more
# (casts around every product) than its faster products save. Measured (benchmarks/model_step_small.md,
# D 64 and 768, 1 and 2 threads): bf16 steps 1.2-2.3x slower at 32 and 128 patches, 0.6-0.8x from 512 on;
# at 256 faster with 1 thread (0.85-0.91x), slower with 2 (1.3-1.4x). Slides have thousands of patches;
# the classic MIL sets (musk1, elephant: 2-40 instances per bag) are far below.
CPU_BF16_MIN_PATCHES = 256


def autocast_dtype(amp: str, device: torch.device, median_patches: float | None = None) -> torch.dtype | None:
    """The autocast dtype for ``amp`` on ``device`` (None: full float32).

    ``auto``: bf16 on a CUDA device that supports it, else fp16 on CUDA; on a CPU bf16 where the
    processor has native bf16 arithmetic (:func:`cpu_has_native_bf16`) and the bags are large enough
    for it to pay (``median_patches``, the median high-scale bag size of the training slides, at least
    :data:`CPU_BF16_MIN_PATCHES`; None: not known, taken as large), else float32.
    ``fp16`` on CPU is refused (CPU autocast has no fp16 benefit and no grad scaler).
    """
    if amp == "off":
        return None
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        if device.type != "cuda":
            raise ValueError("amp: fp16 needs a CUDA device; use bf16 or off on CPU")
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_native_bf16() and not _too_small_for_cpu_bf16(median_patches) else None


def _too_small_for_cpu_bf16(median_patches: float | None) -> bool:
    """The training bags are known to be below :data:`CPU_BF16_MIN_PATCHES` high-scale patches."""
    return median_patches is not None and median_patches < CPU_BF16_MIN_PATCHES


def auto_precision_reason(amp: str, device: torch.device, median_patches: float | None) -> str:
    """Why ``amp: auto`` chose float32 on a CPU with native bf16 (small bags), else ``""``: for the log."""
    if (amp == "auto" and device.type == "cpu" and cpu_has_native_bf16()
            and _too_small_for_cpu_bf16(median_patches)):
        return (f"; the training bags' median of {median_patches:g} high-scale patches is below "
                f"{CPU_BF16_MIN_PATCHES}, where bf16 steps are slower than float32 on a CPU; amp: bf16 forces bf16")
    return ""


def precision_name(dtype: torch.dtype | None) -> str:
    """``bf16``, ``fp16`` or ``fp32``: for logs and summaries."""
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")
