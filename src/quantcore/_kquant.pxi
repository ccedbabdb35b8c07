# K-quants (GGUF Q4_K, Q5_K, Q6_K): quantize, dequantize and decoded parameters
# over 2-D arrays whose rows are ggml super-blocks (csrc/include/quantcore.h).

KTYPE_Q4_K = <int>QC_KTYPE_Q4_K
KTYPE_Q5_K = <int>QC_KTYPE_Q5_K
KTYPE_Q6_K = <int>QC_KTYPE_Q6_K
_KTYPE_NAMES = {KTYPE_Q4_K: "Q4_K", KTYPE_Q5_K: "Q5_K", KTYPE_Q6_K: "Q6_K"}


cdef qc_ktype _check_ktype(int ktype) except *:
    if ktype not in _KTYPE_NAMES:
        raise ValueError(f"ktype must be one of {sorted(_KTYPE_NAMES)}, got {ktype}")
    return <qc_ktype>ktype


def kquant_row_bytes(int ktype, int64_t cols):
    """Bytes of one row of `cols` values (0 when cols is not a positive multiple of 256)."""
    return qc_kquant_row_bytes(_check_ktype(ktype), cols)


def kquant_sub_blocks(int ktype, int64_t cols):
    """Sub-blocks per row: cols / 32 (Q6_K: cols / 16); 0 where kquant_row_bytes is 0."""
    return qc_kquant_sub_blocks(_check_ktype(ktype), cols)


cdef _kquant_cols(int ktype, int64_t cols, str what):
    if cols <= 0 or cols % 256:
        raise ValueError(f"{what}: {_KTYPE_NAMES[ktype]} needs rows (the last axis) of a multiple "
                         f"of 256 values (ggml's super-block), got {cols}")


def quantize_kquant(a, int ktype, importance=None, str what="array"):
    """Quantize a 2-D float array to K-quant super-blocks, ggml's quantizers bit for bit.

    `importance`: None, or one float >= 0 per column (ggml's quant_weights, the
    imatrix path).  Returns uint8 (rows, row_bytes), cache-line aligned.
    """
    cdef qc_ktype kt = _check_ktype(ktype)
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{what} must be a numpy array, got {type(a).__name__}")
    if a.ndim != 2:
        raise ValueError(f"{what} must be 2-D here, got ndim={a.ndim}")
    if a.dtype.kind != "f" or a.dtype.itemsize not in (2, 4, 8):
        raise TypeError(f"{what} must have dtype float16, float32 or float64, got {a.dtype}")
    cdef int64_t rows = a.shape[0], cols = a.shape[1]
    if rows == 0 or cols == 0:
        raise ValueError(f"{what} is empty (shape {a.shape}); nothing to quantize")
    _kquant_cols(ktype, cols, what)
    if a.dtype.itemsize == 8:
        big = np.abs(a) > np.float64(np.finfo(np.float32).max)
        if np.any(big & np.isfinite(a)):
            r, c = np.argwhere(big & np.isfinite(a))[0]
            raise ValueError(f"{what} has a value beyond float32's range at row {r}, column {c} "
                             f"({a[r, c]!r}); K-quants quantize float32 values")
    x = np.ascontiguousarray(a, dtype=np.float32)
    imp = None
    if importance is not None:
        imp = np.ascontiguousarray(importance, dtype=np.float32)
        if imp.shape != (cols,):
            raise ValueError(f"importance must have shape ({cols},) (one value per column of "
                             f"{what}), got {imp.shape}")
    data = aligned_empty((rows, qc_kquant_row_bytes(kt, cols)), np.uint8)
    cdef const float *xp = <const float *>cnp.PyArray_DATA(x)
    cdef const float *ip = NULL
    if imp is not None:
        ip = <const float *>cnp.PyArray_DATA(imp)
    cdef uint8_t *dp = <uint8_t *>cnp.PyArray_DATA(data)
    cdef qc_error err
    cdef qc_status st
    with nogil:
        st = qc_quantize_kquant(kt, xp, rows, cols, cols, ip, dp, &err)
    if st == QC_ERR_RANGE:
        raise ValueError(f"importance must be finite and >= 0; found {imp[err.col]!r} at index "
                         f"{err.col}")
    if st == QC_ERR_OVERFLOW:
        raise ValueError(f"{what} is too large for {_KTYPE_NAMES[ktype]}"
                         f"{'' if imp is None else ' with this importance'}: the super-block at "
                         f"row {err.row}, columns {err.col}..{err.col + 255} needs a float16 scale "
                         f"above 65504 or overflows float32 in ggml's search; rescale the data")
    raise_status(st, err, what)
    return data


cdef _kquant_data(data, int ktype, int64_t rows, int64_t cols):
    _kquant_cols(ktype, cols, "data")
    if rows <= 0:
        raise ValueError(f"rows must be positive, got {rows}")
    want = (rows, qc_kquant_row_bytes(<qc_ktype>ktype, cols))
    data = _need(data, "data", np.uint8, want)
    if cnp.PyArray_DATA(data) == NULL or (<size_t>cnp.PyArray_DATA(data)) % 2:
        data = np.array(data, order="C", copy=True)  # the blocks hold uint16 fields
    return data


def dequantize_kquant(data, int ktype, int64_t rows, int64_t cols, out=None):
    """float32 (rows, cols) values of K-quant super-blocks (into `out` when given),
    equal to gguf.quants.dequantize bit for bit."""
    cdef qc_ktype kt = _check_ktype(ktype)
    data = _kquant_data(data, ktype, rows, cols)
    if out is None:
        out = np.empty((rows, cols), dtype=np.float32)
    else:
        if not isinstance(out, np.ndarray) or out.dtype != np.float32:
            raise TypeError("out must be a float32 numpy array")
        if out.shape != (rows, cols):
            raise ValueError(f"out must have shape {(rows, cols)}, got {out.shape}")
        if not out.flags.writeable:
            raise ValueError("out must be writeable")
        if out.strides[1] != 4 or out.strides[0] % 4 or out.strides[0] < 4 * cols:
            raise ValueError("out must have contiguous rows (C order)")
        if not out.flags.aligned:
            raise ValueError("out must be aligned to 4 bytes (its data pointer is not)")
    cdef const uint8_t *dp = <const uint8_t *>cnp.PyArray_DATA(data)
    cdef float *op = <float *>cnp.PyArray_DATA(out)
    cdef int64_t ostride = out.strides[0] // 4
    cdef qc_error err
    cdef qc_status st
    with nogil:
        st = qc_dequantize_kquant(kt, dp, rows, cols, op, ostride, &err)
    raise_status(st, err, "dequantize")
    return out


def kquant_params(data, int ktype, int64_t rows, int64_t cols):
    """(scales, offsets): float32 (rows, sub-blocks) effective scale d * sc of each
    sub-block and, for Q4_K / Q5_K, the value of code 0, -(dmin * m) (None for Q6_K)."""
    cdef qc_ktype kt = _check_ktype(ktype)
    data = _kquant_data(data, ktype, rows, cols)
    cdef int64_t ns = qc_kquant_sub_blocks(kt, cols)
    scales = np.empty((rows, ns), dtype=np.float32)
    offsets = None if ktype == KTYPE_Q6_K else np.empty((rows, ns), dtype=np.float32)
    cdef const uint8_t *dp = <const uint8_t *>cnp.PyArray_DATA(data)
    cdef float *sp = <float *>cnp.PyArray_DATA(scales)
    cdef float *zp = NULL
    if offsets is not None:
        zp = <float *>cnp.PyArray_DATA(offsets)
    cdef qc_error err
    cdef qc_status st
    with nogil:
        st = qc_kquant_params(kt, dp, rows, cols, sp, zp, &err)
    raise_status(st, err, "data")
    return scales, offsets
