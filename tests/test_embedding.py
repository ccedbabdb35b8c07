"""Embedding: a third-party Cython extension built against quantcore's .pxd and
headers (quantcore.get_include()) calls the kernels through the C API capsule.

The extension is built in a temporary folder by cythonize + setuptools in a
subprocess, exactly as another package's setup.py would; then its results are
held against quantcore's Python API, bit for bit (same kernels), and it is
shown to share quantcore's kernel set and thread count.  Skipped without a C
compiler or Cython.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap

import numpy as np
import pytest

import quantcore
from quantcore import QuantConfig, QuantizedLinear

THIRD_PARTY_PYX = textwrap.dedent('''
    # cython: language_level=3, boundscheck=False, wraparound=False
    """A package that is not quantcore, calling quantcore's kernels without the GIL."""
    from libc.stdint cimport int64_t, uint8_t
    from quantcore.kernels cimport *

    qc_import_api()

    def api_version():
        return QC_API_VERSION

    def isa():
        return qc_isa_name(qc_current_isa()).decode()

    def threads():
        return qc_get_num_threads()

    def quantize_int4_g32(const float[:, ::1] x):
        """(data, scales) of int4 g32 symmetric float32-scale quantization."""
        cdef int64_t rows = x.shape[0], cols = x.shape[1]
        cdef qc_qdesc desc
        desc.kind = QC_SYM4
        desc.group = 32
        desc.per_tensor = 0
        desc.scale_dtype = QC_F32
        cdef int64_t rb = qc_row_bytes(QC_SYM4, cols)
        cdef int64_t ng = qc_num_groups(cols, 32)
        data = bytearray(rows * rb)
        scales = bytearray(rows * ng * 4)
        cdef uint8_t[::1] d = data
        cdef uint8_t[::1] s = scales
        cdef qc_error err
        cdef qc_status st
        with nogil:
            st = qc_quantize(&desc, &x[0, 0], QC_F32, rows, cols, cols * 4, 4, &d[0],
                             <void *>&s[0], NULL, &err)
        if st != QC_OK:
            raise ValueError(f"qc_quantize failed: status {<int>st}")
        return bytes(data), bytes(scales), rb, ng

    def linear_int4_g32(const uint8_t[:, ::1] data, const float[:, ::1] scales,
                        const float[:, ::1] x, float[:, ::1] y, bint int8_compute):
        """y = x @ W.T for an int4 g32 weight held in (data, scales)."""
        cdef qc_qweight w
        w.kind = QC_SYM4
        w.n = data.shape[0]
        w.k = x.shape[1]
        w.group = 32
        w.per_tensor = 0
        w.scale_dtype = QC_F32
        w.data = &data[0, 0]
        w.scales = &scales[0, 0]
        w.zeros = NULL
        cdef qc_compute mode = QC_COMPUTE_I8 if int8_compute else QC_COMPUTE_F32
        cdef qc_status st
        with nogil:
            st = qc_linear(&w, &x[0, 0], x.shape[0], x.shape[1], NULL, &y[0, 0], y.shape[1], mode)
        if st != QC_OK:
            raise ValueError(f"qc_linear failed: status {<int>st}")
''')

SETUP_PY = textwrap.dedent('''
    import quantcore
    from Cython.Build import cythonize
    from setuptools import Extension, setup

    setup(name="thirdparty", ext_modules=cythonize(
        [Extension("thirdparty", ["thirdparty.pyx"], include_dirs=[quantcore.get_include()])],
        quiet=True))
''')


C_CONSUMER = textwrap.dedent('''
    /* A plain C extension using quantcore's kernels through quantcore_api.h. */
    #define PY_SSIZE_T_CLEAN
    #include <Python.h>
    #include "quantcore_api.h"

    static PyObject *isa(PyObject *self, PyObject *args) {
        (void)self; (void)args;
        return PyUnicode_FromString(qc_isa_name(qc_current_isa()));
    }

    static PyObject *row_bytes(PyObject *self, PyObject *args) {
        int kind;
        long long cols;
        (void)self;
        if (!PyArg_ParseTuple(args, "iL", &kind, &cols))
            return NULL;
        return PyLong_FromLongLong((long long)qc_row_bytes((qc_kind)kind, (int64_t)cols));
    }

    /* one row of float32 (bytes) -> its Q4_K super-blocks, through the appended entries */
    static PyObject *q4_k_row(PyObject *self, PyObject *args) {
        Py_buffer x;
        (void)self;
        if (!PyArg_ParseTuple(args, "y*", &x))
            return NULL;
        int64_t cols = (int64_t)(x.len / 4);
        int64_t rb = qc_kquant_row_bytes(QC_KTYPE_Q4_K, cols);
        PyObject *out = rb > 0 ? PyBytes_FromStringAndSize(NULL, (Py_ssize_t)rb) : NULL;
        qc_error err;
        if (!out || qc_quantize_kquant(QC_KTYPE_Q4_K, (const float *)x.buf, 1, cols, cols, NULL,
                                       (uint8_t *)PyBytes_AS_STRING(out), &err) != QC_OK) {
            PyBuffer_Release(&x);
            Py_XDECREF(out);
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "qc_quantize_kquant failed");
            return NULL;
        }
        PyBuffer_Release(&x);
        return out;
    }

    static PyMethodDef methods[] = {
        {"isa", isa, METH_NOARGS, "the kernel set in use"},
        {"row_bytes", row_bytes, METH_VARARGS, "bytes per packed row"},
        {"q4_k_row", q4_k_row, METH_VARARGS, "Q4_K blocks of one float32 row"},
        {NULL, NULL, 0, NULL}};

    static struct PyModuleDef def = {PyModuleDef_HEAD_INIT, "cconsumer", NULL, -1, methods,
                                     NULL, NULL, NULL, NULL};

    PyMODINIT_FUNC PyInit_cconsumer(void) {
        if (qc_import_api() < 0)
            return NULL;
        return PyModule_Create(&def);
    }
''')

C_SETUP_PY = textwrap.dedent('''
    import quantcore
    from setuptools import Extension, setup

    setup(name="cconsumer", ext_modules=[Extension(
        "cconsumer", ["cconsumer.c"], include_dirs=[quantcore.get_include()],
        extra_compile_args=["-Wall", "-Wextra"])])
''')


def _build_and_import(d, modname, env_src):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([env_src] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    r = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=d, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"{modname} build failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    built = [f for f in os.listdir(d) if f.startswith(modname) and f.endswith(suffix)]
    assert built, os.listdir(d)
    spec = importlib.util.spec_from_file_location(modname, os.path.join(d, built[0]))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod, r.stdout + r.stderr


def _have_compiler() -> bool:
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    return shutil.which(cc) is not None


@pytest.fixture(scope="module")
def thirdparty(tmp_path_factory):
    pytest.importorskip("Cython", reason="Cython is not installed")
    if not _have_compiler():
        pytest.skip("no C compiler found (CC / cc)")
    d = tmp_path_factory.mktemp("thirdparty")
    (d / "thirdparty.pyx").write_text(THIRD_PARTY_PYX)
    (d / "setup.py").write_text(SETUP_PY)
    # the quantcore under test must be the one whose .pxd and headers are used
    src = os.path.dirname(os.path.dirname(os.path.abspath(quantcore.__file__)))
    return _build_and_import(str(d), "thirdparty", src)[0]


@pytest.fixture(scope="module")
def cconsumer(tmp_path_factory):
    if not _have_compiler():
        pytest.skip("no C compiler found (CC / cc)")
    d = tmp_path_factory.mktemp("cconsumer")
    (d / "cconsumer.c").write_text(C_CONSUMER)
    (d / "setup.py").write_text(C_SETUP_PY)
    src = os.path.dirname(os.path.dirname(os.path.abspath(quantcore.__file__)))
    return _build_and_import(str(d), "cconsumer", src)


def test_get_include_has_the_headers():
    inc = quantcore.get_include()
    assert os.path.isfile(os.path.join(inc, "quantcore.h"))
    assert os.path.isfile(os.path.join(inc, "quantcore_api.h"))
    pkg = os.path.dirname(quantcore.__file__)
    for pxd in ("kernels.pxd", "_kernels.pxd"):
        assert os.path.isfile(os.path.join(pkg, pxd))
    assert quantcore._ext.C_API_VERSION >= 1
    assert type(quantcore._ext._C_API).__name__ == "PyCapsule"


def test_public_headers_export_no_bench_plumbing():
    """The bandwidth probe and the GEMM switch-over are quantcore's own business
    (csrc/internal.h): not in the headers get_include() ships, nor in the table
    (whose layout changed with them: API version 2)."""
    inc = quantcore.get_include()
    pkg = os.path.dirname(quantcore.__file__)
    for path in [os.path.join(inc, h) for h in os.listdir(inc) if h.endswith(".h")] + \
            [os.path.join(pkg, p) for p in ("kernels.pxd", "_kernels.pxd")]:
        with open(path) as f:
            text = f.read()
        for name in ("read_probe", "QC_GEMM_MIN_M", "threads_for", "QC_PAR_MIN_WORK"):
            assert name not in text, f"{os.path.basename(path)} exports {name}"
    assert quantcore._ext.C_API_VERSION == 2


def test_third_party_quantize_matches_python_api(thirdparty, values):
    x = values((7, 100))
    data, scales, rb, ng = thirdparty.quantize_int4_g32(x)
    qt = quantcore.quantize(x, QuantConfig.int4(group_size=32))
    assert data == qt.data.tobytes()
    assert scales == np.ascontiguousarray(qt.scales, np.float32).tobytes()
    assert (rb, ng) == qt.data.shape[1:] + qt.scales.shape[1:]


@pytest.mark.parametrize("int8_compute", [False, True])
@pytest.mark.parametrize("m", [1, 3, 9])
def test_third_party_linear_matches_quantized_linear(thirdparty, values, rng, m, int8_compute):
    n, k = 33, 96
    cfg = QuantConfig.int4(group_size=32, compute="int8" if int8_compute else "float32")
    qt = quantcore.quantize(values((n, k)), cfg)
    x = rng.standard_normal((m, k)).astype(np.float32)
    y = np.empty((m, n), np.float32)
    thirdparty.linear_int4_g32(np.ascontiguousarray(qt.data), np.ascontiguousarray(qt.scales),
                               x, y, int8_compute)
    assert y.tobytes() == QuantizedLinear(qt, prepack=False)(x).tobytes()  # the row-layout kernel, bit for bit


def test_third_party_shares_kernel_set_and_threads(thirdparty, all_isas, threads):
    assert thirdparty.api_version() == quantcore._ext.C_API_VERSION
    for name in all_isas:
        quantcore.set_isa(name)
        assert thirdparty.isa() == name
    threads(1)
    assert thirdparty.threads() == 1
    threads(3)
    assert thirdparty.threads() == 3


def test_plain_c_extension(cconsumer, all_isas):
    mod, log = cconsumer
    assert "quantcore_api.h" not in log and "quantcore.h" not in log, log  # no warnings
    for name in all_isas:
        quantcore.set_isa(name)
        assert mod.isa() == name
    assert mod.row_bytes(quantcore._ext.KIND_SYM4, 33) == 17
    assert mod.row_bytes(quantcore._ext.KIND_SYM8, 33) == 33
    # the entries appended to the table (K-quants) reach the same kernels
    x = np.random.default_rng(3).standard_normal(512).astype(np.float32)
    want = quantcore.quantize(x[None, :], QuantConfig.q4_k()).data.tobytes()
    assert mod.q4_k_row(x.tobytes()) == want
