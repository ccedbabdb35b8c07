# quantize / dequantize / int4 packing over 2-D arrays (the Python layer flattens N-D).

KIND_SYM8 = <int>QC_SYM8
KIND_ASYM8 = <int>QC_ASYM8
KIND_SYM4 = <int>QC_SYM4
KIND_ASYM4 = <int>QC_ASYM4
KIND_MIN4 = <int>QC_MIN4

_SRC_DTYPES = {np.dtype(np.float32): QC_F32, np.dtype(np.float16): QC_F16,
               np.dtype(np.float64): QC_F64}


cdef inline int64_t _check_kind(int kind) except -1:
    if kind < 0 or kind >= <int>QC_NUM_KINDS:
        raise ValueError(f"kind must be in [0, {<int>QC_NUM_KINDS}), got {kind}")
    return kind


cdef int _guard_f32_rows(a, int64_t m, int64_t cols, str what, bint write) except -1:
    """Guard the pointer arithmetic on a float32 (m, cols) array whose rows are
    contiguous, aligned and at least `cols` floats apart (m < 0: any row count).
    The Python layer checks what its callers pass (quantcore._arrays.check_out)."""
    if not (isinstance(a, np.ndarray) and a.dtype == np.float32 and a.ndim == 2 and
            (m < 0 or a.shape[0] == m) and a.shape[1] == cols and a.strides[1] == 4 and
            (a.shape[0] <= 1 or (a.strides[0] % 4 == 0 and a.strides[0] >= 4 * cols)) and
            a.flags.aligned and (a.flags.writeable or not write)):
        raise ValueError(f"{what} must be a {'writeable ' if write else ''}float32 array of shape "
                         f"({'m' if m < 0 else m}, {cols}) with contiguous, aligned rows")
    return 0


def row_bytes(int kind, int64_t cols):
    _check_kind(kind)
    return qc_row_bytes(<qc_kind>kind, cols)


def num_groups(int64_t cols, int64_t group):
    return qc_num_groups(cols, group)


cdef _as_kernel_input(a, str what):
    """A 2-D float16/32/64 array in native byte order with aligned strides."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{what} must be a numpy array, got {type(a).__name__}")
    if a.ndim != 2:
        raise ValueError(f"{what} must be 2-D here, got ndim={a.ndim}")
    dt = a.dtype
    if dt.kind != "f" or dt.itemsize not in (2, 4, 8):
        raise TypeError(f"{what} must have dtype float16, float32 or float64, got {dt}")
    if not dt.isnative:
        a = a.astype(dt.newbyteorder("="))
    cdef Py_ssize_t isz = a.dtype.itemsize
    cdef size_t addr = <size_t>cnp.PyArray_DATA(<cnp.ndarray>a)
    if (addr % isz) or (a.strides[0] % isz) or (a.strides[1] % isz):
        # np.ascontiguousarray keeps a contiguous but misaligned array as it is
        a = np.array(a, order="C", copy=True)
    return a


QC_ALIGN = 64


def aligned_empty(shape, dtype, align=QC_ALIGN):
    """np.empty whose data starts on an `align`-byte boundary (a cache line), so
    that the kernels' full-width loads of weight rows never straddle two lines."""
    dtype = np.dtype(dtype)
    n = 1
    for s in shape:
        n *= s
    buf = np.empty(n * dtype.itemsize + align, np.uint8)
    off = (-buf.ctypes.data) % align
    return buf[off:off + n * dtype.itemsize].view(dtype).reshape(shape)


def _as_importance(importance, int64_t cols):
    """importance as a contiguous float32 vector of cols finite weights >= 0."""
    try:
        arr = np.asarray(importance)
    except (TypeError, ValueError) as e:
        raise ValueError(f"importance must be a 1-D array of {cols} weights (one per column); "
                         f"could not make an array of it: {e}") from None
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"importance must hold real numbers (float32-convertible), got "
                        f"{type(importance).__name__} of dtype {arr.dtype}")
    if arr.ndim != 1 or arr.shape[0] != cols:
        raise ValueError(f"importance must be a 1-D array of {cols} weights (one per column "
                         f"of the array), got shape {arr.shape}")
    with np.errstate(over="ignore"):  # values beyond float32 become inf, reported below
        w = np.ascontiguousarray(arr, dtype=np.float32)
    bad = np.flatnonzero(~(np.isfinite(w) & (w >= 0)))
    if len(bad):
        j = int(bad[0])
        v = arr[j]
        if not np.isfinite(w[j]):
            rule = "finite" if not np.isfinite(v) else "finite in float32"
        else:
            rule = ">= 0 (one weight per column; zero marks a column that does not matter)"
        raise ValueError(f"importance must be {rule}, got {v!r} at column {j}")
    return w


def quantize_2d(a, int kind, int64_t group=0, bint per_tensor=False, bint scale_f16=False,
                str what="array", bint mse=False, importance=None):
    """Quantize a 2-D float array row by row (mse: method="mse", the search for
    the least squared error; else absmax).

    importance (mse only): None, or one weight >= 0 per column (float32 after
    conversion); the search then minimises sum_j importance[j] * error_j^2 (a
    group whose weights are all equal, all zero included, gets the unweighted
    search).

    Returns (data, scales, zeros): data is int8 (kind SYM8) or uint8, shape
    (rows, row_bytes); scales (rows, n_groups), or (1, 1) when per_tensor, in
    float16 or float32; zeros the integer zero points (uint8), the Q4_1 minima
    (scale dtype), or None.
    """
    _check_kind(kind)
    if importance is not None and not mse:
        raise ValueError("importance is only used by the mse search (mse=True); "
                         "absmax quantization ignores it")
    a = _as_kernel_input(a, what)
    cdef int64_t rows = a.shape[0], cols = a.shape[1]
    if rows == 0 or cols == 0:
        raise ValueError(f"{what} is empty (shape {a.shape}); nothing to quantize")
    w = None if importance is None else _as_importance(importance, cols)
    if group < 0:
        raise ValueError(f"group must be >= 0, got {group}")
    if qc_kind_bits(<qc_kind>kind) == 4 and 0 < group < cols and group % 2:
        raise ValueError(f"group must be even for 4-bit formats, got {group}")
    cdef qc_qdesc desc
    desc.kind = <qc_kind>kind
    desc.group = group
    desc.per_tensor = per_tensor
    desc.scale_dtype = QC_F16 if scale_f16 else QC_F32
    cdef int64_t ng = 1 if per_tensor else qc_num_groups(cols, group)
    cdef int64_t srows = 1 if per_tensor else rows
    sdt = np.float16 if scale_f16 else np.float32
    data = aligned_empty((rows, qc_row_bytes(desc.kind, cols)),
                         np.int8 if kind == <int>QC_SYM8 else np.uint8)
    scales = np.empty((srows, ng), dtype=sdt)
    zeros = None
    if kind == <int>QC_ASYM8 or kind == <int>QC_ASYM4:
        zeros = np.empty((srows, ng), dtype=np.uint8)
    elif kind == <int>QC_MIN4:
        zeros = np.empty((srows, ng), dtype=sdt)
    cdef qc_dtype sdtype = _SRC_DTYPES[a.dtype]
    cdef const void *src = cnp.PyArray_DATA(a)
    cdef int64_t rs = a.strides[0], cs = a.strides[1]
    cdef uint8_t *dp = <uint8_t *>cnp.PyArray_DATA(data)
    cdef void *sp = cnp.PyArray_DATA(scales)
    cdef void *zp = NULL if zeros is None else cnp.PyArray_DATA(zeros)
    cdef const float *wp = NULL
    if w is not None:
        wp = <const float *>cnp.PyArray_DATA(w)
    cdef qc_error err
    cdef qc_status st
    with nogil:
        if wp != NULL:
            st = qc_quantize_mse_weighted(&desc, src, sdtype, rows, cols, rs, cs, wp, dp, sp, zp,
                                          &err)
        elif mse:
            st = qc_quantize_mse(&desc, src, sdtype, rows, cols, rs, cs, dp, sp, zp, &err)
        else:
            st = qc_quantize(&desc, src, sdtype, rows, cols, rs, cs, dp, sp, zp, &err)
    raise_status(st, err, what)
    return data, scales, zeros


def _need(arr, str what, dtype, shape):
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"{what} must be a numpy array, got {type(arr).__name__}")
    if arr.dtype != dtype:
        raise TypeError(f"{what} must have dtype {np.dtype(dtype)}, got {arr.dtype}")
    if arr.shape != shape:
        raise ValueError(f"{what} must have shape {shape}, got {arr.shape}")
    if not arr.flags.aligned:
        return np.array(arr, order="C", copy=True)
    return np.ascontiguousarray(arr)


def dequantize_2d(data, scales, zeros, int kind, int64_t rows, int64_t cols, int64_t group=0,
                  bint per_tensor=False, out=None):
    """Inverse of quantize_2d into a float32 (rows, cols) array (or `out`)."""
    _check_kind(kind)
    if rows <= 0 or cols <= 0:
        raise ValueError(f"rows and cols must be positive, got {rows}, {cols}")
    cdef qc_qdesc desc
    desc.kind = <qc_kind>kind
    desc.group = group
    desc.per_tensor = per_tensor
    if not isinstance(scales, np.ndarray) or scales.dtype not in (np.float16, np.float32):
        raise TypeError("scales must be a float16 or float32 numpy array")
    desc.scale_dtype = QC_F16 if scales.dtype == np.float16 else QC_F32
    cdef int64_t ng = 1 if per_tensor else qc_num_groups(cols, group)
    cdef int64_t srows = 1 if per_tensor else rows
    data = _need(data, "data", np.int8 if kind == <int>QC_SYM8 else np.uint8,
                 (rows, qc_row_bytes(desc.kind, cols)))
    scales = _need(scales, "scales", scales.dtype, (srows, ng))
    if kind == <int>QC_ASYM8 or kind == <int>QC_ASYM4:
        zeros = _need(zeros, "zero_points", np.uint8, (srows, ng))
    elif kind == <int>QC_MIN4:
        zeros = _need(zeros, "zero_points", scales.dtype, (srows, ng))
    else:
        zeros = None
    if out is None:
        out = np.empty((rows, cols), dtype=np.float32)
    else:
        _guard_f32_rows(out, rows, cols, "out", True)
    cdef const uint8_t *dp = <const uint8_t *>cnp.PyArray_DATA(data)
    cdef const void *sp = cnp.PyArray_DATA(scales)
    cdef const void *zp = NULL if zeros is None else cnp.PyArray_DATA(zeros)
    cdef float *op = <float *>cnp.PyArray_DATA(out)
    cdef int64_t ostride = out.strides[0] // 4
    cdef qc_error err
    cdef qc_status st
    with nogil:
        st = qc_dequantize(&desc, dp, sp, zp, rows, cols, op, ostride, &err)
    raise_status(st, err, "dequantize")
    return out


def pack_int4_2d(values, bint is_signed):
    """Pack a 2-D int8 ([-8, 7]) or uint8 ([0, 15]) array along its rows."""
    if not isinstance(values, np.ndarray) or values.ndim != 2:
        raise TypeError("values must be a 2-D numpy array")
    if values.dtype != (np.int8 if is_signed else np.uint8):
        raise TypeError(f"values must be {'int8' if is_signed else 'uint8'}, got {values.dtype}")
    values = np.ascontiguousarray(values)
    cdef int64_t rows = values.shape[0], cols = values.shape[1]
    out = np.empty((rows, (cols + 1) // 2), dtype=np.uint8)
    cdef const uint8_t *sp = <const uint8_t *>cnp.PyArray_DATA(values)
    cdef uint8_t *op = <uint8_t *>cnp.PyArray_DATA(out)
    cdef qc_error err
    cdef qc_status st
    with nogil:
        st = qc_pack_int4(sp, rows, cols, is_signed, op, &err)
    if st == QC_ERR_RANGE:
        lo, hi = (-8, 7) if is_signed else (0, 15)
        bad = values[err.row, err.col]
        raise ValueError(f"values must lie in [{lo}, {hi}] for {values.dtype}; "
                         f"found {bad} at position {err.col} of row {err.row}")
    raise_status(st, err, "values")
    return out


def unpack_int4_2d(packed, int64_t cols, bint is_signed):
    """Unpack (rows, ceil(cols/2)) bytes into (rows, cols) int8 or uint8 values."""
    if not isinstance(packed, np.ndarray) or packed.ndim != 2 or packed.dtype != np.uint8:
        raise TypeError("packed must be a 2-D uint8 numpy array")
    if cols < 0 or packed.shape[1] != (cols + 1) // 2:
        raise ValueError(f"packed rows hold {packed.shape[1]} bytes, which cannot hold "
                         f"n={cols} values (need {(cols + 1) // 2})")
    packed = np.ascontiguousarray(packed)
    cdef int64_t rows = packed.shape[0]
    out = np.empty((rows, cols), dtype=np.int8 if is_signed else np.uint8)
    cdef const uint8_t *sp = <const uint8_t *>cnp.PyArray_DATA(packed)
    cdef uint8_t *op = <uint8_t *>cnp.PyArray_DATA(out)
    cdef qc_status st
    with nogil:
        st = qc_unpack_int4(sp, rows, cols, is_signed, op)
    cdef qc_error err
    err.row = -1
    raise_status(st, err, "packed")
    return out
