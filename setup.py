"""Build of quantcore's one extension module, ``quantcore._ext``.

Every C kernel and the Cython wrapper are linked into this one module so that
there is a single dispatch table and a single thread setting.

Portable by default: the baseline is the platform's default target (x86-64 or
armv8-a); SIMD kernels carry their own ``target`` attributes, so one build runs
everywhere and picks its kernels at import.

Environment variables read at build time:

* ``QUANTCORE_NATIVE=1``: add ``-march=native`` (the wheel then runs only on
  CPUs like the build machine).
* ``QUANTCORE_SANITIZE=address,undefined``: build with those sanitizers.

Threads: the kernels run on quantcore's own pool (csrc/pool.c: POSIX threads,
``-pthread``); the build needs no OpenMP.  Without POSIX threads (e.g. MSVC on
Windows) the pool is serial and every kernel runs on the calling thread.

``-ffp-contract=off`` is always on: the kernels are specified as separately
rounded products and sums, and a fused multiply-add the compiler invents would
break their bit-exactness with the scalar reference and GGUF.
"""

import glob
import os
import shutil
import sys

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
C_SOURCES = [
    "csrc/api.c",
    "csrc/api_linear.c",
    "csrc/api_table.c",
    "csrc/api_kquant.c",
    "csrc/cpu.c",
    "csrc/dispatch.c",
    "csrc/pool.c",
    "csrc/packed.c",
    "csrc/ref/quant_scalar.c",
    "csrc/ref/linear_scalar.c",
    "csrc/ref/mse_scalar.c",
    "csrc/ref/kquant_scalar.c",
    "csrc/ref/kquant_linear_scalar.c",
    "csrc/ref/packed_scalar.c",
    "csrc/x86/quant_avx2.c",
    "csrc/x86/linear_avx2.c",
    "csrc/x86/packed_avx2.c",
    "csrc/x86/gemm_avx2.c",
    "csrc/x86/gemm_avx512.c",
    "csrc/x86/mse_avx2.c",
    "csrc/x86/kquant_avx2.c",
    "csrc/x86/kquant_avx512.c",
    "csrc/x86/linear_avx512.c",
    "csrc/x86/packed_avx512.c",
    "csrc/x86/kquant_linear_avx2.c",
    "csrc/x86/kquant_linear_avx512.c",
    "csrc/arm/quant_neon.c",
    "csrc/arm/mse_neon.c",
    "csrc/arm/linear_neon.c",
    "csrc/arm/kquant_linear_neon.c",
]


def _flag_set(name):
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no", "off")


class BuildExt(build_ext):
    def build_extensions(self):
        cc = self.compiler
        unix = cc.compiler_type == "unix"
        cflags, ldflags = [], []
        if unix:
            cflags += ["-std=gnu11", "-O3", "-ffp-contract=off", "-fno-strict-aliasing",
                       "-Wall", "-Wno-unused-function", "-Wno-unknown-pragmas"]
            if _flag_set("QUANTCORE_NATIVE"):
                cflags.append("-march=native")
            san = os.environ.get("QUANTCORE_SANITIZE", "").strip()
            if san:
                cflags += [f"-fsanitize={san}", "-fno-omit-frame-pointer", "-g", "-O1"]
                ldflags += [f"-fsanitize={san}"]
        else:  # MSVC
            cflags += ["/O2", "/fp:precise"]

        if unix:
            cflags.append("-pthread")
            ldflags.append("-pthread")
        if os.environ.get("QUANTCORE_OPENMP") is not None:
            print("quantcore: QUANTCORE_OPENMP is ignored: the kernels run on quantcore's own "
                  "thread pool", file=sys.stderr)

        build_flags = " ".join(dict.fromkeys(cflags + ldflags))  # -fopenmp once
        # A build folder reused with other flags (QUANTCORE_NATIVE, ...) is rebuilt.
        stamp = os.path.join(self.build_temp, "quantcore-flags.txt")
        if _read(stamp) != build_flags:
            self.force = True
        for ext in self.extensions:
            ext.extra_compile_args = list(ext.extra_compile_args or []) + cflags
            ext.extra_link_args = list(ext.extra_link_args or []) + ldflags
            ext.define_macros = list(ext.define_macros or []) + [
                ("QC_BUILD_FLAGS", '"%s"' % build_flags.replace('"', "")),
            ]
        super().build_extensions()
        os.makedirs(self.build_temp, exist_ok=True)
        with open(stamp, "w") as f:
            f.write(build_flags)


def _read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _copy_public_header():
    """Ship the C headers inside the package (quantcore.get_include())."""
    src = os.path.join(HERE, "csrc", "include")
    dst = os.path.join(HERE, "src", "quantcore", "include")
    os.makedirs(dst, exist_ok=True)
    for name in sorted(os.listdir(src)):
        if name.endswith(".h"):
            text = _read(os.path.join(src, name))
            if _read(os.path.join(dst, name)) != text:  # unchanged: keep its date
                with open(os.path.join(dst, name), "w") as f:
                    f.write(text)


def _cython_output_current(pyx):
    """True when the C file Cython made from `pyx` is newer than every .pyx, .pxd
    and .pxi of the package.  Then a second build (``pip install .`` followed by
    ``pip install ".[test]"``) reuses it and, through setuptools' date check, the
    compiled module in build/: cythonize would instead see a Cython freshly
    installed in pip's isolated build environment as a newer dependency and
    start over, C files included."""
    c_file = os.path.splitext(pyx)[0] + ".c"
    if not os.path.exists(c_file):
        return False
    here = os.path.dirname(pyx)
    ours = [os.path.join(here, f) for f in os.listdir(here) if f.endswith((".pyx", ".pxd", ".pxi"))]
    return all(os.path.getmtime(f) <= os.path.getmtime(c_file) for f in ours)


_copy_public_header()

PYX = "src/quantcore/_ext.pyx"
CYTHON_CURRENT = _cython_output_current(PYX)

extensions = [
    Extension(
        "quantcore._ext",
        sources=[PYX[:-4] + ".c" if CYTHON_CURRENT else PYX] + C_SOURCES,
        include_dirs=["csrc/include", "csrc", np.get_include()],
        # headers and the per-ISA templates (*.inc): a change rebuilds the module
        depends=sorted(glob.glob("csrc/**/*.h", recursive=True) + glob.glob("csrc/**/*.inc", recursive=True)),
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    )
]

setup(
    ext_modules=extensions if CYTHON_CURRENT else cythonize(
        extensions,
        language_level=3,
        compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True,
                             "embedsignature": True},
    ),
    cmdclass={"build_ext": BuildExt},
)
