"""Guard pages: every input (and output) buffer of quantize, dequantize,
pack/unpack_int4 and QuantizedLinear.forward placed right against a PROT_NONE
page (tests/guard.py), over the awkward shapes, every format and every ISA.
A read or write one byte outside a buffer segfaults; the cases run in a child
process (tests/caserunner.py), so that shows up as a failed case naming the op,
the format and the ISA (the child's stderr names the shape).  Results must also
equal those of ordinary arrays.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

if sys.platform == "win32":  # pragma: no cover
    pytest.skip("guard pages need POSIX mmap/mprotect", allow_module_level=True)

import quantcore as qc
from quantcore import QuantConfig, QuantizedLinear, QuantizedTensor

from caserunner import run_cases
from helpers import AWKWARD_SHAPES

CONFIGS = {
    "int8": QuantConfig.int8(),
    "uint8": QuantConfig(bits=8, symmetric=False),
    "int4_g32": QuantConfig.int4(),
    "uint4_g32": QuantConfig(bits=4, symmetric=False, group_size=32),
    "int4_g16": QuantConfig(bits=4, group_size=16),
    "q8_0": QuantConfig.q8_0(),
    "q4_1": QuantConfig.q4_1(),
    "int4_tensor": QuantConfig.int4(granularity="tensor"),
    "uint8_tensor_f16": QuantConfig(bits=8, symmetric=False, granularity="tensor", scale_dtype="float16"),
}
LINEAR_CONFIGS = [c for c in CONFIGS if c != "int4_g16"]  # QuantizedLinear needs groups of 32k
OPS = ["quantize", "dequantize", "pack", "unpack", "forward"]
ISAS = qc.available_isas()
# forward: K x N shapes (odd N, K around the block and group edges) and row counts
# that take the GEMV (< 8) and the GEMM (>= 8) paths
LINEAR_SHAPES = [(1, 1), (7, 3), (17, 5), (31, 9), (32, 16), (33, 17), (63, 1), (64, 33),
                 (65, 31), (100, 7), (257, 19)]
ROWS = [1, 2, 7, 8, 9, 17]


def _note(msg):
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()


def _same(got, want, what):
    g, w = np.ascontiguousarray(got), np.ascontiguousarray(want)
    assert g.shape == w.shape and g.dtype == w.dtype, f"{what}: {g.shape}/{g.dtype} vs {w.shape}/{w.dtype}"
    assert g.tobytes() == w.tobytes(), f"{what}: guarded result differs from the ordinary one"


def _guarded_qt(qt, before=False):
    from guard import guarded
    z = None if qt._zeros is None else guarded(qt._zeros, before)
    return QuantizedTensor._make(guarded(qt._data, before), guarded(qt._scales, before), z,
                                 qt.shape, qt.dtype, qt.config)


def case_quantize(cfg):
    from guard import guarded
    rng = np.random.default_rng(1)
    for shape in AWKWARD_SHAPES:
        for dtype in (np.float32, np.float16, np.float64):
            x = (rng.standard_normal(shape) * 3).astype(dtype)
            want = qc.quantize(x, cfg)
            for before in (False, True):
                _note(f"quantize {shape} {np.dtype(dtype).name} before={before}")
                g = guarded(x, before, writeable=False)
                assert qc.quantize(g, cfg) == want, f"quantize {shape}"
            # a reversed view: its first element in memory is the base's first byte
            _note(f"quantize {shape} {np.dtype(dtype).name} reversed")
            g = guarded(x[::-1, ::-1], before=True)[::-1, ::-1]
            assert qc.quantize(g, cfg) == want, f"quantize reversed {shape}"


def case_dequantize(cfg):
    from guard import guarded
    rng = np.random.default_rng(2)
    for shape in AWKWARD_SHAPES:
        qt = qc.quantize(rng.standard_normal(shape).astype(np.float32), cfg)
        want = qt.dequantize()
        for before in (False, True):
            _note(f"dequantize {shape} before={before}")
            gq = _guarded_qt(qt, before)
            _same(gq.dequantize(), want, f"dequantize {shape}")
            out = guarded(np.zeros(shape, np.float32), before)
            gq.dequantize(out=out)
            _same(out, want, f"dequantize(out=) {shape}")


def case_pack(cfg):
    from guard import guarded
    del cfg
    rng = np.random.default_rng(3)
    for shape in AWKWARD_SHAPES:
        for signed in (False, True):
            v = rng.integers(-8 if signed else 0, 8 if signed else 16, shape).astype(
                np.int8 if signed else np.uint8)
            want = qc.pack_int4(v)
            for before in (False, True):
                _note(f"pack {shape} signed={signed} before={before}")
                packed = qc.pack_int4(guarded(v, before))
                _same(packed, want, f"pack {shape}")
                _same(qc.unpack_int4(guarded(packed, before), shape[-1], signed), v, f"unpack {shape}")


def case_unpack(cfg):
    from guard import guarded
    del cfg
    rng = np.random.default_rng(4)
    for shape in AWKWARD_SHAPES:
        nbytes = (shape[-1] + 1) // 2
        p = rng.integers(0, 256, (shape[0], nbytes)).astype(np.uint8)
        if shape[-1] % 2:
            p[:, -1] &= 0x0F
        want = qc.unpack_int4(p, shape[-1])
        for before in (False, True):
            _note(f"unpack {shape} before={before}")
            _same(qc.unpack_int4(guarded(p, before), shape[-1]), want, f"unpack {shape}")
            _same(qc.unpack_int4(guarded(p, before), shape[-1], signed=True),
                  qc.unpack_int4(p, shape[-1], signed=True), f"unpack signed {shape}")


def case_forward(cfg):
    from guard import guarded
    rng = np.random.default_rng(5)
    for k, n in LINEAR_SHAPES:
        w = rng.standard_normal((n, k)).astype(np.float32)
        bias = rng.standard_normal(n).astype(np.float32)
        # int8 with prepack=False: the row-layout kernels read the guarded arrays
        # (prepacked layers read their own copy: tests/test_packed.py guards that)
        for compute, prepack in (("float32", True), ("int8", True), ("int8", False)):
            qt = qc.quantize(w, cfg.replace(compute=compute))
            layer = QuantizedLinear(qt, bias, prepack=prepack)
            for before in (False, True):
                glayer = QuantizedLinear(_guarded_qt(qt, before), bias, prepack=prepack)
                for m in ROWS:
                    _note(f"forward K={k} N={n} {compute} M={m} before={before}")
                    x = rng.standard_normal((m, k)).astype(np.float32)
                    want = layer(x)
                    gx = guarded(x, before, writeable=False)
                    _same(glayer(gx), want, f"forward K={k} N={n} M={m} {compute}")
                    out = guarded(np.zeros((m, n), np.float32), before)
                    glayer(gx, out=out)
                    _same(out, want, f"forward(out=) K={k} N={n} M={m} {compute}")
                    if m > 1:  # rows strided apart inside a wider guarded buffer
                        wide = guarded(np.concatenate([x, x[:, :3]], axis=1), before)[:, :k]
                        _same(glayer(wide), want, f"forward strided K={k} N={n} M={m}")


def _cases():
    out = {}
    for isa in ISAS:
        for op in OPS:
            names = LINEAR_CONFIGS if op == "forward" else (["-"] if op in ("pack", "unpack") else CONFIGS)
            for cname in names:
                out[f"{op}-{cname}-{isa}"] = (op, cname, isa)
    return out


CASES = _cases()


def child_cases():
    def make(op, cname, isa):
        def run():
            qc.set_isa(isa)
            globals()[f"case_{op}"](CONFIGS.get(cname))
        return run
    return {name: make(*spec) for name, spec in CASES.items()}


@pytest.fixture(scope="module")
def outcomes():
    return run_cases("test_guard_pages", list(CASES))


def test_guard_page_really_faults():
    """The helper works: touching the byte after a guarded array kills the child."""
    import subprocess
    code = ("import ctypes, numpy as np, guard; a = guard.guarded(np.zeros(10, np.float32)); "
            "print(float(a[-1]), flush=True); "
            "ctypes.c_char.from_address(a.ctypes.data + a.nbytes).value")
    import os
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(__file__)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    for var in ("LD_PRELOAD", "ASAN_OPTIONS", "UBSAN_OPTIONS"):  # a sanitizer run: not for this fault
        env.pop(var, None)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert r.stdout.strip() == "0.0"
    assert r.returncode < 0, f"reading past a guarded array did not fault: {r.returncode} {r.stderr[-500:]}"


@pytest.mark.parametrize("name", list(CASES))
def test_guarded_buffers(name, outcomes):
    res = outcomes[name]
    assert res["status"] != "crash", f"{name}: CRASH (a read or write outside a buffer): {res['msg']}"
    assert res["status"] == "ok", f"{name}: {res['type']}: {res['msg']}"
