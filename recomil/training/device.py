"""Device and precision selection (``amp: auto|bf16|fp16|off``); nothing assumes a GPU."""

from __future__ import annotations

import torch


def pick_device() -> torch.device:
    """CUDA when present, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``amp`` on ``device`` (None: full float32).

    ``auto``: bf16 on a CUDA device that supports it, else fp16 on CUDA; float32 on CPU.
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
    return None
