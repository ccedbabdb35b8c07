# Linear layer forward: y = x @ W^T + bias over a quantized W (see qc_linear).

COMPUTE_F32 = <int>QC_COMPUTE_F32
COMPUTE_I8 = <int>QC_COMPUTE_I8
# K-quant weights (linear layers only): KIND_Q4_K + the K-quant type
KIND_Q4_K = <int>QC_KIND_Q4_K
KIND_Q5_K = <int>QC_KIND_Q5_K
KIND_Q6_K = <int>QC_KIND_Q6_K

cdef extern from "internal.h" nogil:
    int64_t qc_packed_bytes(const qc_qweight *w)
    qc_status qc_pack_weight(const qc_qweight *w, uint8_t *dst, int64_t dst_bytes, qc_qweight *pw)
    qc_status qc_unpack_weight(const qc_qweight *pw, uint8_t *data, void *scales, void *zeros)


cdef class QWeight:
    """A quantized (n, k) weight as the linear kernels see it (no copy).

    Holds references to the arrays, so they outlive every call.  Built once per
    layer by the Python layer after it has validated the arrays.
    """
    cdef qc_qweight w
    cdef object _keep
    cdef readonly bint packed
    cdef readonly int64_t nbytes
    cdef object _shapes

    def __init__(self, data, scales, zeros, int kind, int64_t n, int64_t k, int64_t group,
                 bint per_tensor, bint pack=False, buffer=None):
        """pack=True: hold the weight in the packed kernels' layout (a copy of the
        same bytes, rearranged) where this build packs it (see ``packed``), and
        drop the references to the row-layout arrays; ``unpack()`` rebuilds them.
        `buffer`: a writable uint8 array of exactly the packed size to pack into
        (tests place it against a guard page); default a new array."""
        self.packed = False
        self._shapes = None
        if n < 1 or k < 1:
            raise ValueError(f"n and k must be positive, got {n}, {k}")
        if kind in (KIND_Q4_K, KIND_Q5_K, KIND_Q6_K):  # super-blocks only: scales, zeros unused
            rb = qc_kquant_row_bytes(<qc_ktype>(kind - <int>QC_KIND_Q4_K), k)
            if rb == 0:
                raise ValueError(f"k must be a positive multiple of 256 for K-quant weights, got {k}")
            data = _need(data, "data", np.uint8, (n, rb))
            self._keep = (data,)
            self.w.kind = <qc_kind>kind
            self.w.n = n
            self.w.k = k
            self.w.group = 0
            self.w.per_tensor = 0
            self.w.scale_dtype = QC_F32
            self.w.data = <const uint8_t *>cnp.PyArray_DATA(data)
            self.w.scales = NULL
            self.w.zeros = NULL
            self.nbytes = data.nbytes
            return
        _check_kind(kind)
        ng = 1 if per_tensor else qc_num_groups(k, group)
        sr = 1 if per_tensor else n
        data = _need(data, "data", np.int8 if kind == <int>QC_SYM8 else np.uint8,
                     (n, qc_row_bytes(<qc_kind>kind, k)))
        if not isinstance(scales, np.ndarray) or scales.dtype not in (np.float16, np.float32):
            raise TypeError("scales must be a float16 or float32 numpy array")
        scales = _need(scales, "scales", scales.dtype, (sr, ng))
        if kind == <int>QC_ASYM8 or kind == <int>QC_ASYM4:
            zeros = _need(zeros, "zero_points", np.uint8, (sr, ng))
        elif kind == <int>QC_MIN4:
            zeros = _need(zeros, "zero_points", scales.dtype, (sr, ng))
        else:
            zeros = None
        self._keep = (data, scales, zeros)
        self.w.kind = <qc_kind>kind
        self.w.n = n
        self.w.k = k
        self.w.group = group
        self.w.per_tensor = per_tensor
        self.w.scale_dtype = QC_F16 if scales.dtype == np.float16 else QC_F32
        self.w.data = <const uint8_t *>cnp.PyArray_DATA(data)
        self.w.scales = cnp.PyArray_DATA(scales)
        self.w.zeros = NULL if zeros is None else cnp.PyArray_DATA(zeros)
        self.nbytes = data.nbytes + scales.nbytes + (0 if zeros is None else zeros.nbytes)
        cdef int64_t nb = qc_packed_bytes(&self.w) if pack else 0
        cdef qc_qweight pw
        if nb > 0:
            if buffer is None:  # 64-byte aligned: the kernels' loads then never split a cache line
                raw = np.empty(nb + 64, np.uint8)
                off = (-raw.ctypes.data) % 64
                buf = raw[off:off + nb]
            else:
                buf = buffer
                if not isinstance(buf, np.ndarray) or buf.dtype != np.uint8 or \
                        buf.shape != (nb,) or not buf.flags.c_contiguous or not buf.flags.writeable:
                    raise ValueError(f"buffer must be a writable contiguous uint8 array of shape ({nb},)")
            if qc_pack_weight(&self.w, <uint8_t *>cnp.PyArray_DATA(buf), nb, &pw) != QC_OK:
                raise RuntimeError("packing the weight failed")  # geometry checked above
            self._shapes = (data.dtype, data.shape, scales.dtype, scales.shape,
                            None if zeros is None else zeros.dtype)
            self.w = pw
            self._keep = (buf,)
            self.packed = True
            self.nbytes = nb

    def unpack(self):
        """The weight in the row layout: (data, scales, zeros) arrays (new ones
        for a packed weight, the held ones otherwise; zeros None where the kind
        has none)."""
        if not self.packed:
            return self._keep + (None,) * (3 - len(self._keep))
        ddt, dshape, sdt, sshape, zdt = self._shapes
        data = np.empty(dshape, ddt)
        scales = np.empty(sshape, sdt)
        zeros = None if zdt is None else np.empty(sshape, zdt)
        cdef void *zp = NULL if zeros is None else cnp.PyArray_DATA(zeros)
        cdef qc_status st = qc_unpack_weight(&self.w, <uint8_t *>cnp.PyArray_DATA(data),
                                             cnp.PyArray_DATA(scales), zp)
        if st != QC_OK:
            raise RuntimeError("unpacking the weight failed")
        return data, scales, zeros

    def uses_gemm(self, int64_t m, int mode):
        return bool(qc_linear_uses_gemm(&self.w, m, <qc_compute>mode))

    def forward(self, x, bias, out, int mode):
        """x: float32 (m, k) with contiguous rows; bias: float32 (n,) or None;
        out: float32 (m, n) with contiguous rows.  QuantizedLinear checks what its
        callers pass; the pointers are guarded here, the work runs without the GIL."""
        _guard_f32_rows(x, -1, self.w.k, "x", False)
        _guard_f32_rows(out, x.shape[0], self.w.n, "out", True)
        cdef const float *bp = NULL
        if bias is not None:
            if not isinstance(bias, np.ndarray) or bias.dtype != np.float32 or \
                    bias.shape != (self.w.n,) or not bias.flags.c_contiguous or \
                    not bias.flags.aligned:
                raise TypeError(f"bias must be a contiguous float32 array of shape ({self.w.n},)")
            bp = <const float *>cnp.PyArray_DATA(bias)
        if mode != <int>QC_COMPUTE_F32 and mode != <int>QC_COMPUTE_I8:
            raise ValueError(f"mode must be COMPUTE_F32 or COMPUTE_I8, got {mode}")
        cdef int64_t m = x.shape[0]
        cdef int64_t lx = x.strides[0] // 4 if m > 1 else self.w.k
        cdef int64_t ly = out.strides[0] // 4 if m > 1 else self.w.n
        cdef const float *xp = <const float *>cnp.PyArray_DATA(x)
        cdef float *yp = <float *>cnp.PyArray_DATA(out)
        cdef qc_status st
        cdef qc_error err
        err.row = -1
        with nogil:
            st = qc_linear(&self.w, xp, m, lx, bp, yp, ly, <qc_compute>mode)
        raise_status(st, err, "forward")
        return out
