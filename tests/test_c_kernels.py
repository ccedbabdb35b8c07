"""The C-level harness (tests/c): every SIMD kernel against the scalar reference,
bit for bit, over ~700k cases, natively and, where a cross compiler and qemu are
installed, for aarch64 NEON under qemu-user."""
import os
import shutil
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CSRC = os.path.join(ROOT, "csrc")

pytestmark = pytest.mark.skipif(
    not os.path.isdir(CSRC) or sys.platform == "win32",
    reason="needs the source tree (csrc/) and a POSIX shell")


def _run(script, env=None):
    r = subprocess.run(["sh", os.path.join(HERE, "c", script)], cwd=ROOT,
                       capture_output=True, text=True, timeout=900,
                       env=None if env is None else {**os.environ, **env})
    out = r.stdout + r.stderr
    return r.returncode, out


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                    reason="no C compiler on PATH")
def test_native_simd_matches_scalar():
    rc, out = _run("run_native.sh")
    assert rc == 0, out[-4000:]
    assert " passed, 0 failed" in out, out[-4000:]


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                    reason="no C compiler on PATH")
def test_native_linear_without_inline_assembly():
    """QC_NO_ASM: the AVX2 kernels' intrinsics paths (also what the packed AVX2
    kernels fall back to when their activation copy cannot be allocated)."""
    import tempfile
    import zlib
    build = os.path.join(tempfile.gettempdir(), f"quantcore-ctest-noasm-{zlib.crc32(ROOT.encode())}")
    rc, out = _run("run_native.sh", {"CFLAGS": "-DQC_NO_ASM", "QC_TEST_SECTIONS": "linear",
                                     "BUILD_DIR": build})
    assert rc == 0, out[-4000:]
    assert " passed, 0 failed" in out, out[-4000:]


def test_neon_matches_scalar_under_qemu():
    rc, out = _run("run_neon_qemu.sh")
    if "SKIP" in out and rc == 0:
        pytest.skip(out.strip().splitlines()[-1])
    assert rc == 0, out[-4000:]
    assert " passed, 0 failed" in out, out[-4000:]
