"""Array coercion and ``out=`` checks: the one place every quantcore module uses.

Torch tensors are recognised by their methods (``detach`` and ``cpu``), so torch is
never imported here.  Every check raises TypeError or ValueError naming the
argument, what was expected and what came.  This module imports nothing from
quantcore, so any module may use it.
"""

from __future__ import annotations

from typing import Any, Tuple

import numpy as np

__all__ = ["from_torch", "to_numpy", "as_float_array", "check_out"]


def from_torch(value: Any) -> Any:
    """A torch tensor as a NumPy array on the CPU (bfloat16, which NumPy lacks, as
    float32); any other value unchanged."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        value = value.detach().cpu()
        if str(getattr(value, "dtype", "")) == "torch.bfloat16":
            value = value.float()
        value = value.numpy()
    return value


def to_numpy(value: Any, what: str, expected: str = "an array") -> np.ndarray:
    """`value` as an ndarray: an ndarray as it is, a torch tensor or an array-like
    converted; TypeError "`what` must be `expected`: ..." when it is no array."""
    value = from_torch(value)
    if isinstance(value, np.ndarray):
        return value
    try:
        return np.asarray(value)
    except Exception as e:  # ragged lists and the like
        raise TypeError(f"{what} must be {expected}: {e}") from None


def as_float_array(array: Any, what: str = "array") -> np.ndarray:
    """A float16/32/64 ndarray of ndim >= 1 with at least one element (never a copy
    of an ndarray)."""
    a = to_numpy(array, what, "an array of floats")
    if a.dtype.kind != "f" or a.dtype.itemsize not in (2, 4, 8):
        raise TypeError(f"{what} must have dtype float16, float32 or float64, got {a.dtype}")
    if a.ndim < 1:
        raise ValueError(f"{what} must have ndim >= 1, got a 0-d array")
    if a.size == 0:
        raise ValueError(f"{what} is empty (shape {a.shape}); nothing to quantize")
    return a


def check_out(out: Any, shape: Tuple[int, ...], what: str = "out") -> np.ndarray:
    """`out` itself, once it is a writeable, aligned, C-contiguous float32 ndarray of
    `shape` (the buffer a caller passes to be written)."""
    shape = tuple(shape)
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{what} must be a numpy array, got {type(out).__name__}")
    if out.dtype != np.float32:
        raise TypeError(f"{what} must have dtype float32, got {out.dtype}")
    if out.shape != shape:
        raise ValueError(f"{what} must have shape {shape}, got {out.shape}")
    if not out.flags.writeable:
        raise ValueError(f"{what} must be writeable")
    if not out.flags.c_contiguous:
        raise ValueError(f"{what} must be C-contiguous")
    if not out.flags.aligned:
        raise ValueError(f"{what} must be aligned to 4 bytes (its data pointer is not)")
    return out
