"""GPTQ: codes chosen against the layer's inputs (method="gptq").

GPTQ (Frantar et al., 2022) quantizes the columns of a weight ``W`` (rows x K)
one after the other and lets each column's rounding error be absorbed by the
columns not yet quantized, so that the layer's output ``x @ W.T`` changes as
little as possible on the calibration inputs: it minimises
``tr((W - Q) H (W - Q).T)`` with ``H = X.T X / rows`` greedily, column by column.

This implementation uses the equivalent nearest-plane form (the order of
Babai's algorithm): with ``H = B.T B``, B lower triangular (one Cholesky
factorization of H with its axes reversed; no matrix inverse) and
``C = B / diag(B)`` (unit lower triangular), column i is rounded from

    t_i = w_i + sum_{l < i} C[i, l] * e_l,    e_l = w_l - dequantize(q_l),

which is the value GPTQ's update rule gives column i.  The sum is evaluated
lazily: a block of 128 columns gets the contributions of all earlier blocks in
one matrix product, sub-blocks of 16 inside it likewise, and a column only the
few of its own sub-block.  The algebra is NumPy (BLAS) in float64, except the
block products of large layers (16M weights and up), which carry the errors
forward in float32; the factorization is always float64.

Scales follow the format's own rules (``csrc/formats.h``, computed by the C
kernels; ``search=True`` uses the method="mse" search instead):

* group-wise: a group's parameters are chosen when its first column is reached,
  from the group's weights as GPTQ has updated them so far (the least-error
  values of those columns given the columns already quantized);
* per-channel, per-tensor, and every group with ``act_order``: from the
  original weights, before any column is quantized ("static" groups), so
  that the stored format stays a plain row layout.

Codes are the nearest ones for the scale as stored (float16-rounded where the
format stores float16), and the result is an ordinary QuantizedTensor of the
config's format.  ``act_order`` quantizes the columns in order of decreasing
``diag(H)``; ``damp`` adds that fraction of the mean diagonal to H's diagonal.
Input channels that were always zero in the calibration data (zero diagonal)
are rounded plainly and do not influence the others.
"""

from __future__ import annotations

import contextlib
from typing import Any, ContextManager, Optional

import numpy as np

from . import _ext
from .config import QuantConfig

__all__ = ["gptq_arrays"]

BLOCK = 128
SUB_BLOCK = 16
_MAX_DAMP_TRIES = 8
_BIG = 1 << 26  # multiply-adds from which a matrix product may use every BLAS thread
_LAZY_FLOAT32_FROM = 1 << 24  # weights from which the lazy block products run in float32


class _Blas:
    """BLAS threads for the work at hand.  GPTQ makes thousands of small matrix
    products whose OpenBLAS threads cost more than they give (far more on a busy
    machine), and a few large ones that want every core.  With threadpoolctl
    installed, the small ones run on one thread and ``big()`` restores the
    count for a large one; without it this changes nothing."""

    _controller: Any = None

    def __init__(self) -> None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            self.ctl = None
            return
        if _Blas._controller is None:
            _Blas._controller = ThreadpoolController()
        self.ctl = _Blas._controller
        counts = [lib.num_threads for lib in self.ctl.select(user_api="blas").lib_controllers]
        self.threads = max(counts) if counts else 1

    def small(self) -> ContextManager[Any]:
        """Context: one BLAS thread."""
        if self.ctl is None or self.threads <= 1:
            return contextlib.nullcontext()
        return self.ctl.limit(limits=1, user_api="blas")

    def big(self, madds: float) -> ContextManager[Any]:
        """Context (inside ``small()``): every thread for a product of `madds`."""
        if self.ctl is None or self.threads <= 1 or madds < _BIG:
            return contextlib.nullcontext()
        return self.ctl.limit(limits=self.threads, user_api="blas")


def _cholesky_inplace(a: np.ndarray, blas: _Blas, nb: int = 64) -> None:
    """Lower Cholesky factor of the symmetric positive definite `a`, in place
    (the strict upper triangle is left as it was).  Blocked, left-looking: the
    work is matrix products, one small factorization per diagonal block.
    Raises np.linalg.LinAlgError when `a` is not positive definite."""
    k = a.shape[0]
    for j0 in range(0, k, nb):
        j1 = min(j0 + nb, k)
        if j0:
            with blas.big((k - j0) * j0 * (j1 - j0)):
                a[j0:, j0:j1] -= a[j0:, :j0] @ a[j0:j1, :j0].T
        ljj = np.linalg.cholesky(a[j0:j1, j0:j1])
        if not np.all(np.isfinite(ljj)):
            raise np.linalg.LinAlgError("non-finite factor")
        a[j0:j1, j0:j1] = ljj
        if j1 < k:
            a[j1:, j0:j1] = a[j1:, j0:j1] @ np.linalg.inv(ljj).T


def _factor(h: np.ndarray, order: np.ndarray, damp: float, blas: _Blas) -> np.ndarray:
    """The lower Cholesky factor L of ``J P (H + damping) P.T J`` (P: the
    quantization `order`, J: reversal), so that ``B = J L.T J`` is lower
    triangular with ``B.T B`` the damped, reordered H (see the module docstring).
    Input channels with a zero diagonal (never active in the calibration data)
    get the mean diagonal and no coupling.  Damping grows tenfold while the
    factorization fails.  `h` (symmetric, unscaled sums are fine) is not modified."""
    k = h.shape[0]
    ro = order[::-1]
    diag = np.diagonal(h)[ro]
    dead = ~(diag > 0)
    mean = float(diag[~dead].mean()) if not dead.all() else 1.0
    extra = damp * mean
    for _ in range(_MAX_DAMP_TRIES):
        a = h[np.ix_(ro, ro)]
        if dead.any():
            idx = np.flatnonzero(dead)
            a[idx, :] = 0.0
            a[:, idx] = 0.0
            a[idx, idx] = mean
        a[np.diag_indices(k)] += extra
        try:
            _cholesky_inplace(a, blas)
            return a
        except np.linalg.LinAlgError:
            del a
            extra = max(extra * 10.0, 1e-3 * mean)
    raise ValueError("the calibration statistics could not be factorized (not positive definite "  # pragma: no cover
                     "even with extra damping)")


def _group_params(rows2d: np.ndarray, config: QuantConfig, search: bool,
                  importance: Optional[np.ndarray], per_tensor: bool = False, group: int = 0):
    """Scales and zero points (as stored, float32 / int32) of `rows2d` by the
    format's rules: one set per row (group=0), per group, or per tensor."""
    a = np.ascontiguousarray(rows2d, dtype=np.float32)
    kw = {}
    if search and importance is not None:
        kw["importance"] = np.ascontiguousarray(importance, dtype=np.float32)
    _, s, z = _ext.quantize_2d(a, config.kind, group, per_tensor, config.scale_dtype == "float16",
                               "weight", search, **kw)
    return s, z


class _Quantizer:
    """Nearest codes of a column for given stored parameters, and their values
    as the kernels dequantize them (float32 products and sums)."""

    def __init__(self, kind: int) -> None:
        self.kind = kind
        self.off: Optional[int]
        if kind == _ext.KIND_SYM8:
            self.lo, self.hi, self.off = -127, 127, 0
        elif kind == _ext.KIND_SYM4:
            self.lo, self.hi, self.off = 0, 15, 8
        elif kind == _ext.KIND_ASYM8:
            self.lo, self.hi, self.off = 0, 255, None
        else:  # ASYM4, MIN4
            self.lo, self.hi, self.off = 0, 15, None

    def __call__(self, t: np.ndarray, d: np.ndarray, z: Optional[np.ndarray]):
        """(codes as float64, dequantized float32 values) for targets t (float64),
        scales d (float32) and zero points z (int32; float32 minima for Q4_1)."""
        zero_d = d == 0
        dsafe = np.where(zero_d, np.float32(1), d).astype(np.float64)
        if self.kind == _ext.KIND_MIN4:
            assert z is not None
            q = np.rint((t - z) / dsafe)
            np.clip(q, self.lo, self.hi, out=q)
            q[zero_d] = 0
            return q, d * q.astype(np.float32) + z
        zero = np.float64(self.off) if z is None else z.astype(np.float64)
        q = np.rint(t / dsafe)
        q += zero
        np.clip(q, self.lo, self.hi, out=q)
        if zero_d.any():
            q = np.where(zero_d, zero, q)
        return q, d * (q - zero).astype(np.float32)


def gptq_arrays(w: np.ndarray, hessian: np.ndarray, config: QuantConfig, *, act_order: bool = False,
                damp: float = 0.01, search: bool = False, block: int = BLOCK,
                lazy_float32: Optional[bool] = None):
    """GPTQ on a 2-D float array `w` (rows, K) with the symmetric K x K
    `hessian` (``X.T X``, any positive scale; not modified).  `search` chooses
    each group's parameters with the method="mse" search weighted by
    ``diag(H)`` instead of the format's rule; `block` is the lazy block;
    `lazy_float32` forces the float32 block products on or off (default: from
    16M weights).  Returns
    ``(codes, scales, zeros)``: codes (rows, K) int16 in the format's code range,
    scales and zeros in the layout of ``_ext.quantize_2d`` (float16/float32
    scales; uint8 zero points, the Q4_1 minima, or None)."""
    blas = _Blas()
    with blas.small():
        return _gptq(w, hessian, config, act_order, damp, search, block, blas, lazy_float32)


def _gptq(w: np.ndarray, hessian: np.ndarray, config: QuantConfig, act_order: bool, damp: float,
          search: bool, block: int, blas: _Blas, lazy_float32: Optional[bool]):
    n, k = w.shape
    kind = config.kind
    f16 = config.scale_dtype == "float16"
    per_tensor = config.granularity == "tensor"
    g = (config.group_size or 0) if config.granularity == "group" else 0
    if g >= k:
        g = 0
    diag = np.diagonal(hessian).copy()
    order = np.argsort(-diag, kind="stable") if act_order else np.arange(k)
    low = _factor(hessian, order, damp, blas)
    ldiag = np.diagonal(low).copy()

    static = g == 0 or act_order
    if static:
        s_all, z_all = _group_params(w, config, search, diag if g == 0 and not per_tensor else None,
                                     per_tensor=per_tensor, group=g)
        if per_tensor:
            s_all = np.broadcast_to(s_all.reshape(1, 1), (n, 1))
            z_all = None if z_all is None else np.broadcast_to(z_all.reshape(1, 1), (n, 1))
        d_static = s_all.astype(np.float32)
        z_static = None if z_all is None else z_all.astype(np.float32 if kind == _ext.KIND_MIN4 else np.int32)
    else:
        ng = -(-k // g)
        s_all = np.empty((n, ng), np.float16 if f16 else np.float32)
        z_all = None
        if kind in (_ext.KIND_ASYM8, _ext.KIND_ASYM4):
            z_all = np.empty((n, ng), np.uint8)
        elif kind == _ext.KIND_MIN4:
            z_all = np.empty((n, ng), s_all.dtype)
    quant = _Quantizer(kind)

    wt = np.ascontiguousarray(np.asarray(w, dtype=np.float64).T[order])  # (K, rows), in quantization order
    if lazy_float32 is None:
        lazy_float32 = n * k >= _LAZY_FLOAT32_FROM
    # the errors (and the block products that carry them forward) in float32 for large layers
    err = np.empty(wt.shape, np.float32 if lazy_float32 else np.float64)
    codes = np.empty((k, n), np.int16)
    if g and not act_order:
        block = max(block, g)
        block -= block % g
    sub = min(SUB_BLOCK, g) if g and not act_order else SUB_BLOCK

    d_col: Any = None
    z_col: Any = None
    for b1 in range(0, k, block):
        b2 = min(b1 + block, k)
        # C[b1:b2, :b2] (rows: this block's columns; C = B / diag(B), B = J L.T J)
        cb = np.ascontiguousarray(low[k - b2:, k - b2:k - b1][::-1, ::-1].T)
        cb /= ldiag[k - 1 - np.arange(b1, b2)][:, None]
        t = wt[b1:b2].copy()
        if b1:
            with blas.big((b2 - b1) * b1 * n):
                if lazy_float32:
                    t += cb[:, :b1].astype(np.float32) @ err[:b1]
                else:
                    t += cb[:, :b1] @ err[:b1]
        for s1 in range(b1, b2, sub):
            s2 = min(s1 + sub, b2)
            for i in range(s1, s2):
                r = i - b1
                if static:
                    gi = 0 if g == 0 else order[i] // g
                    d_col = d_static[:, gi]
                    z_col = None if z_static is None else z_static[:, gi]
                elif i % g == 0:
                    e = min(i + g, k)
                    # the group's least-error values given the columns quantized so far
                    # (sub-blocks start on group boundaries, so t holds every earlier column)
                    u = t[r:r + e - i]
                    if i:
                        u = wt[i:e] + np.linalg.inv(np.tril(cb[r:r + e - i, i:e])) @ (u - wt[i:e])
                    s, z = _group_params(u.T, config, search, diag[i:e] if search else None)
                    s_all[:, i // g] = s[:, 0]
                    d_col = s[:, 0].astype(np.float32)
                    if z is None:
                        z_col = None
                    else:
                        assert z_all is not None
                        z_all[:, i // g] = z[:, 0]
                        z_col = z[:, 0].astype(np.float32 if kind == _ext.KIND_MIN4 else np.int32)
                ti = t[r]
                if i > s1:
                    ti = ti + cb[r, s1:i] @ err[s1:i]
                q, deq = quant(ti, d_col, z_col)
                codes[i] = q
                err[i] = wt[i] - deq
            if s2 < b2:
                t[s2 - b1:] += cb[s2 - b1:, s1:s2] @ err[s1:s2]
    del low, err, wt
    if act_order:
        inv = np.empty_like(order)
        inv[order] = np.arange(k)
        codes = codes[inv]
    if per_tensor:
        s_all = np.ascontiguousarray(s_all[:1, :1])
        z_all = None if z_all is None else np.ascontiguousarray(z_all[:1, :1])
    return np.ascontiguousarray(codes.T), s_all, z_all
