"""Magnitude pruning: zero the smallest-magnitude fraction of a tensor."""

from __future__ import annotations

import math
from typing import Any, Tuple

import numpy as np

from ._arrays import to_numpy

__all__ = ["prune_magnitude"]


def _prune_count(n: int, sparsity: float) -> int:
    """How many of `n` weights a `sparsity` prunes: round half up of n * sparsity
    (the small epsilon absorbs binary fractions such as 0.29 * 100 = 28.999...)."""
    return min(n, int(math.floor(n * sparsity + 0.5 + 1e-9)))


def prune_magnitude(array: Any, sparsity: float, per_row: bool = False
                    ) -> Tuple[np.ndarray, np.ndarray]:
    """Set the smallest-magnitude fraction `sparsity` of `array` to zero.

    Returns ``(pruned, mask)``: `pruned` is a new array of the same shape and
    dtype (the input is never modified), `mask` a bool array, True where a
    weight is kept.

    * Count: ``k = floor(n * sparsity + 0.5)`` weights are pruned (round half up;
      ``n`` is the tensor's size, or the length of the last axis with
      ``per_row=True``, where every row along the last axis loses exactly ``k``).
    * Ties: among weights of equal magnitude the one earlier in C order is
      pruned first, so the result is deterministic; ``-0.0`` and ``0.0`` are equal.
    * `array`: a float or integer array of ndim >= 1 (a 0-d array or a scalar is
      rejected, and so is an empty array); NaN raises ValueError (it has no magnitude order); +-Inf are
      the largest magnitudes.  `sparsity` in [0, 1].
    """
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float, np.integer, np.floating)):
        raise TypeError(f"sparsity must be a real number in [0, 1], got {type(sparsity).__name__}")
    s = float(sparsity)
    if not 0.0 <= s <= 1.0:  # NaN fails too
        raise ValueError(f"sparsity must lie in [0, 1], got {sparsity!r}")
    if not isinstance(per_row, (bool, np.bool_)):
        raise TypeError(f"per_row must be True or False, got {per_row!r}")
    a = to_numpy(array, "array")
    if a.dtype.kind not in "fiu":
        raise TypeError(f"array must have a float or integer dtype, got {a.dtype}")
    if a.ndim < 1:
        raise ValueError("array must have ndim >= 1, got a 0-d array")
    if a.size == 0:
        raise ValueError(f"array is empty (shape {a.shape}); nothing to prune")
    if a.dtype.kind == "f" and np.isnan(a).any():
        raise ValueError("array contains NaN; magnitude pruning needs ordered values")

    rows = a.reshape(-1, a.shape[-1]) if per_row else a.reshape(1, -1)
    n = rows.shape[1]
    k = _prune_count(n, s)
    # any ndim: reshaped back to a.shape below
    mask: np.ndarray = np.ones(rows.shape, dtype=bool)
    if k == n:
        mask[:] = False
    elif k > 0:
        # |x| as float64 (exact for every float and integer up to 2^53; int64 beyond
        # that rounds, which only merges nearly equal magnitudes into ties)
        mag = np.abs(rows.astype(np.float64))
        t = np.partition(mag, k - 1, axis=1)[:, k - 1:k]  # the k-th smallest per row
        less = mag < t
        tied = mag == t
        need = k - less.sum(axis=1, keepdims=True)  # how many tied ones go, >= 1
        prune = less | (tied & (np.cumsum(tied, axis=1) <= need))
        mask = ~prune
    mask = mask.reshape(a.shape)
    pruned = np.where(mask, a, np.zeros((), dtype=a.dtype))
    return pruned, mask
