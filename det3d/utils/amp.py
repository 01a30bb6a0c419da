"""
Autocast (mixed precision) dtypes from config values, for training (``SOLVER.AMP``) and inference
(``TEST.AMP``), on CUDA and on CPU.

On CUDA autocast runs in float16 (with a ``GradScaler`` in training) or bfloat16; on CPU in
bfloat16 only: float16 CPU kernels are slow or missing, so asking for it raises instead of
silently running something else.
"""

import contextlib
from typing import Optional

import torch

__all__ = ["AMP_DTYPES", "resolve_amp_dtype", "autocast"]

# Config spellings of the autocast dtypes; "" picks float16 on CUDA and bfloat16 on CPU.
AMP_DTYPES = {"": None, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_amp_dtype(name: str, device_type: str, key: str = "SOLVER.AMP.DTYPE") -> torch.dtype:
    """
    The autocast dtype that config value ``name`` means on ``device_type``.

    Args:
        name: "", "float16" or "bfloat16" (also a ``torch.dtype`` of those two).
        device_type: "cuda" or "cpu".
        key: the config key ``name`` came from, for error messages.

    Returns:
        torch.dtype: float16 or bfloat16.

    Raises:
        ValueError: an unknown name, float16 on CPU, or a device autocast does not support.
    """
    if isinstance(name, torch.dtype):
        dtype = name
        if dtype not in (torch.float16, torch.bfloat16):
            raise ValueError(f"{key}={name}: autocast dtype must be float16 or bfloat16")
    else:
        if name not in AMP_DTYPES:
            raise ValueError(f"{key}={name!r} is not one of {sorted(AMP_DTYPES)}")
        dtype = AMP_DTYPES[name]
    if device_type == "cuda":
        return dtype or torch.float16
    if device_type == "cpu":
        if dtype == torch.float16:
            raise ValueError(
                f"{key}='float16' on CPU: CPU mixed precision runs in bfloat16; set "
                f"{key} to 'bfloat16' (or '' for the device's default), or disable AMP"
            )
        return torch.bfloat16
    raise ValueError(f"{key}: mixed precision is not supported on device type {device_type!r}")


def autocast(device_type: str, dtype: Optional[torch.dtype], enabled: bool = True):
    """``torch.autocast(device_type, dtype)`` when ``enabled``, else a null context."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=dtype)
