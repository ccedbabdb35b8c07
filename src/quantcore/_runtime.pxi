# CPU features, the kernel set in use, threads and build facts.

_FEATURE_BITS = {
    "sse2": 1 << 0, "avx": 1 << 1, "avx2": 1 << 2, "fma": 1 << 3, "f16c": 1 << 4,
    "avx512f": 1 << 5, "avx512bw": 1 << 6, "avx512vl": 1 << 7, "avx512_vnni": 1 << 8,
    "avx_vnni": 1 << 9, "neon": 1 << 10, "dotprod": 1 << 11,
}

ISA_NAMES = tuple(qc_isa_name(<qc_isa>i).decode() for i in range(<int>QC_NUM_ISAS))

cdef extern from "pool.h" nogil:
    const char *qc_pool_kind()
    int qc_pool_workers()
    int qc_pool_spin_us()

cdef extern from *:
    """
    #ifndef QC_BUILD_FLAGS
    #define QC_BUILD_FLAGS ""
    #endif
    static const char *qc_build_flags(void) { return QC_BUILD_FLAGS; }
    """
    const char *qc_build_flags()


def cpu_features():
    """The CPU's SIMD features that the OS also enables, as {name: bool}."""
    cdef uint32_t f = qc_cpu_features()
    return {name: bool(f & bit) for name, bit in _FEATURE_BITS.items()}


cdef int _isa_index(str name) except -1:
    try:
        return ISA_NAMES.index(name)
    except ValueError:
        raise ValueError(f"unknown ISA {name!r}; expected one of {', '.join(ISA_NAMES)}") from None


def compiled_isas():
    """Kernel sets compiled into this build."""
    return tuple(n for i, n in enumerate(ISA_NAMES) if qc_isa_compiled(<qc_isa>i))


def supported_isas():
    """Kernel sets this build has and this CPU runs, lowest first."""
    return tuple(n for i, n in enumerate(ISA_NAMES) if qc_isa_supported(<qc_isa>i))


def best_isa():
    """The best kernel set this CPU runs."""
    return ISA_NAMES[<int>qc_best_isa()]


def current_isa():
    """The kernel set in use."""
    return ISA_NAMES[<int>qc_current_isa()]


def select_isa(str name):
    """Use the kernel set `name` (must be in supported_isas())."""
    cdef int i = _isa_index(name)
    if qc_select_isa(<qc_isa>i) != QC_OK:
        raise ValueError(f"ISA {name!r} is not available here; available: "
                         f"{', '.join(supported_isas())}")


def set_num_threads(int n):
    qc_set_num_threads(n)


def get_num_threads():
    return qc_get_num_threads()


def pool_info():
    """The kernels' thread pool: {"kind": "pthreads" or "serial", "workers":
    threads started so far, "spin_us": how long an idle worker polls before it
    sleeps}."""
    return {"kind": qc_pool_kind().decode(), "workers": qc_pool_workers(),
            "spin_us": qc_pool_spin_us()}


def build_flags():
    return qc_build_flags().decode()


cdef extern from "internal.h" nogil:
    uint64_t qc_read_probe(const void *p, size_t bytes)


def read_probe(buf):
    """Read a C-contiguous array of >= 64 bytes with the kernels' threads (the
    benchmark's memory-bandwidth probe, not part of the C API); returns a checksum."""
    if not isinstance(buf, np.ndarray) or not buf.flags.c_contiguous:
        raise TypeError("buf must be a C-contiguous numpy array")
    cdef size_t nbytes = buf.nbytes // 64 * 64
    cdef const void *p = cnp.PyArray_DATA(<cnp.ndarray>buf)
    cdef uint64_t r
    with nogil:
        r = qc_read_probe(p, nbytes)
    return r
