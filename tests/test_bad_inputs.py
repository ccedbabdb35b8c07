"""The bad-input matrix: every public function and the command line, fed wrong
types and dtypes, wrong shapes, empty arrays, NaN/Inf, out-of-range settings,
bad ``out=`` buffers and corrupt, truncated or hostile files.

Each case must raise TypeError or ValueError (OSError for a missing file) whose
message names the argument, never crash.  The cases run one by one in a child
process (tests/caserunner.py), so a segfault or abort fails its own case instead
of the whole test run.  A case whose API is missing from the build under test
(``needs=...``) skips with "not yet implemented: <name>" and switches on by
itself once the API exists.

Also here: NaN/Inf in activations propagate through every forward path (GEMV
and GEMM, float32 and int8 compute, every format and ISA) as IEEE arithmetic
would, and the other rows stay bit for bit what they are without them.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import struct
import tempfile
from typing import Callable, NamedTuple, Optional, Sequence, Tuple, Type

import numpy as np
import pytest

import quantcore as qc
from quantcore import QuantConfig, QuantizedLinear, QuantizedTensor

from caserunner import Skip, run_cases


class Case(NamedTuple):
    id: str
    fn: Callable[[], object]
    exc: Tuple[Type[BaseException], ...]
    words: Sequence[str]          # each must appear in the message (case-insensitive)
    needs: Optional[str] = None   # dotted name under quantcore that must exist


def _rng():
    return np.random.default_rng(1234)


def W(rows=8, cols=64, dtype=np.float32):
    return _rng().standard_normal((rows, cols)).astype(dtype)


def _layer(cfg=None, bias=False):
    w = W()
    b = _rng().standard_normal(8).astype(np.float32) if bias else None
    return QuantizedLinear.from_linear(w, b, cfg or QuantConfig.int8())


def _with(a, at, value):
    a = a.copy()
    a[at] = value
    return a


def _readonly(a):
    a.setflags(write=False)
    return a


def _unaligned(shape, dtype=np.float32):
    n = int(np.prod(shape))
    buf = np.zeros(n * np.dtype(dtype).itemsize + 1, np.uint8)
    a = np.frombuffer(buf.data, dtype, n, offset=1).reshape(shape)
    assert not a.flags.aligned
    return a


def _need(name: str):
    """The object quantcore.<name> (dotted), or Skip when it does not exist yet."""
    obj = qc
    parts = name.split(".")
    for i, part in enumerate(parts):
        if not hasattr(obj, part) and i == 0:
            try:  # a submodule (quantcore.gguf) is not imported by quantcore itself
                import importlib
                obj = importlib.import_module(f"quantcore.{part}")
                continue
            except ImportError:
                raise Skip(f"not yet implemented: quantcore.{name}") from None
        if not hasattr(obj, part):
            raise Skip(f"not yet implemented: quantcore.{name}")
        obj = getattr(obj, part)
    return obj


def _tmp(name: str, content: bytes) -> str:
    d = tempfile.mkdtemp(prefix="qc-bad-")
    path = os.path.join(d, name)
    with open(path, "wb") as f:
        f.write(content)
    return path


def _missing() -> str:
    return os.path.join(tempfile.mkdtemp(prefix="qc-bad-"), "does-not-exist.bin")


# ---- files -------------------------------------------------------------------------------
def safetensors_bytes(header: object, data: bytes = b"", header_len: Optional[int] = None) -> bytes:
    """A safetensors file: u64 little-endian header length, JSON header, data."""
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(h) if header_len is None else header_len
    return struct.pack("<Q", n) + h + data


def _valid_safetensors() -> bytes:
    """A file quantcore.save wrote (one int4 tensor), or a plain one without quantcore."""
    save = _need("save")
    d = tempfile.mkdtemp(prefix="qc-bad-")
    path = os.path.join(d, "ok.safetensors")
    save(path, {"w": qc.quantize(W(), QuantConfig.int4())})
    with open(path, "rb") as f:
        return f.read()


def _load_bytes(content: bytes, name="bad.safetensors"):
    load = _need("load")
    return load(_tmp(name, content))


def _gguf_valid() -> bytes:
    gg = _need("gguf.save")
    d = tempfile.mkdtemp(prefix="qc-bad-")
    path = os.path.join(d, "ok.gguf")
    gg(path, {"w": qc.quantize(W(8, 64), QuantConfig.q8_0())})
    with open(path, "rb") as f:
        return f.read()


def _gguf_load_bytes(content: bytes):
    load = _need("gguf.load")
    return load(_tmp("bad.gguf", content))


def _gguf_patch(offset: int, fmt: str, value) -> bytes:
    b = bytearray(_gguf_valid())
    struct.pack_into(fmt, b, offset, value)
    return bytes(b)


# ---- the command line ---------------------------------------------------------------------
class CLIError(ValueError):
    """The CLI exited non-zero with a one-line message (what a case expects)."""


def _cli(*argv, needs_cmd: Optional[str] = None):
    from quantcore import cli
    if needs_cmd is not None:
        if needs_cmd not in cli._parser().get_default("_subparsers").choices:
            raise Skip(f"not yet implemented: quantcore {needs_cmd}")
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        rc = cli.main(list(argv))
    msg = err.getvalue().strip()
    if rc == 0:
        raise AssertionError(f"quantcore {' '.join(argv)} exited 0 (stdout {out.getvalue()[:200]!r})")
    if "Traceback" in msg or len(msg.splitlines()) > 2:
        raise AssertionError(f"quantcore {' '.join(argv)}: not a one-line error: {msg[:800]}")
    raise CLIError(f"exit {rc}: {msg}")


def _cli_file(content: bytes, cmd: str, *extra):
    return _cli(cmd, _tmp("bad.safetensors", content), *extra, needs_cmd=cmd)


TE, VE, OE = (TypeError,), (ValueError,), (OSError,)
TVE = (TypeError, ValueError)
NAN_W = _with(W(), (3, 5), np.nan)
q4 = QuantConfig.int4()


def _qt(cfg=QuantConfig.int8(), w=None):
    return qc.quantize(W() if w is None else w, cfg)


def _from_arrays(cfg=QuantConfig.int8(), **change):
    qt = _qt(cfg)
    kw = dict(data=qt.data, scales=qt.scales, zero_points=qt.zero_points, shape=qt.shape,
              config=cfg)
    kw.update(change)
    return QuantizedTensor.from_arrays(**kw)


CASES = [
    # ---- QuantConfig ---------------------------------------------------------------------
    Case("config-bits-3", lambda: QuantConfig(bits=3), VE, ["bits", "8 or 4"]),
    Case("config-bits-bool", lambda: QuantConfig(bits=True), VE, ["bits"]),
    Case("config-bits-float", lambda: QuantConfig(bits=4.0), VE, ["bits"]),
    Case("config-bits-str", lambda: QuantConfig(bits="8"), VE, ["bits"]),
    Case("config-group-24", lambda: QuantConfig(group_size=24), VE, ["group_size", "power of two"]),
    Case("config-group-8", lambda: QuantConfig(group_size=8), VE, ["group_size"]),
    Case("config-group-negative", lambda: QuantConfig(group_size=-32), VE, ["group_size"]),
    Case("config-group-huge", lambda: QuantConfig(group_size=2**70), TVE, ["group_size"]),
    Case("config-granularity", lambda: QuantConfig(granularity="row"), VE, ["granularity"]),
    Case("config-group-with-channel", lambda: QuantConfig(group_size=32, granularity="channel"),
         VE, ["group_size"]),
    Case("config-scale-dtype", lambda: QuantConfig(scale_dtype="int8"), VE, ["scale_dtype"]),
    Case("config-method", lambda: QuantConfig(method="l1"), VE, ["method"]),
    Case("config-compute", lambda: QuantConfig(compute="fp16"), VE, ["compute"]),
    Case("config-symmetric-str", lambda: QuantConfig(symmetric="yes"), VE, ["symmetric"]),
    Case("config-format", lambda: QuantConfig(format="q5_0"), VE, ["format"]),
    Case("config-gguf-fixed", lambda: QuantConfig.q4_0(bits=8), VE, ["bits"]),
    Case("config-replace-unknown", lambda: QuantConfig.int8().replace(bogus=1), TE, ["bogus"]),
    Case("config-from-dict-unknown", lambda: QuantConfig.from_dict({"bitz": 8}), VE, ["bitz"]),
    Case("config-from-dict-list", lambda: QuantConfig.from_dict([("bits", 8)]), TE, ["config"]),
    # ---- quantize ------------------------------------------------------------------------
    Case("quantize-object", lambda: qc.quantize(np.array([[1.0, None]], object)), TE, ["array", "dtype"]),
    Case("quantize-complex", lambda: qc.quantize(np.ones((2, 4), np.complex64)), TE, ["array", "dtype"]),
    Case("quantize-int32", lambda: qc.quantize(np.ones((2, 4), np.int32)), TE, ["array", "dtype"]),
    Case("quantize-bool", lambda: qc.quantize(np.ones((2, 4), bool)), TE, ["array", "dtype"]),
    Case("quantize-str", lambda: qc.quantize("abc"), TE, ["array"]),
    Case("quantize-datetime", lambda: qc.quantize(np.zeros(4, "datetime64[s]")), TE, ["array"]),
    Case("quantize-structured", lambda: qc.quantize(np.zeros(4, [("a", "f4")])), TE, ["array"]),
    Case("quantize-ragged", lambda: qc.quantize([[1.0, 2.0], [3.0]]), TE, ["array"]),
    Case("quantize-0d", lambda: qc.quantize(np.float32(1)), VE, ["array", "ndim"]),
    Case("quantize-empty-rows", lambda: qc.quantize(np.zeros((0, 16), np.float32)), VE, ["array", "empty"]),
    Case("quantize-empty-cols", lambda: qc.quantize(np.zeros((4, 0), np.float32), q4), VE, ["array", "empty"]),
    Case("quantize-empty-1d", lambda: qc.quantize(np.zeros(0)), VE, ["array", "empty"]),
    Case("quantize-nan", lambda: qc.quantize(NAN_W), VE, ["array", "nan", "row 3, column 5"]),
    Case("quantize-inf-int4", lambda: qc.quantize(_with(W(), (7, 63), np.inf), q4), VE, ["array", "inf"]),
    Case("quantize-neginf-f16", lambda: qc.quantize(_with(W(dtype=np.float16), (0, 0), -np.inf),
                                                    QuantConfig.q4_1()), VE, ["array", "inf"]),
    Case("quantize-nan-tensor", lambda: qc.quantize(NAN_W, QuantConfig(granularity="tensor")),
         VE, ["array", "nan"]),
    Case("quantize-f16-scale-overflow", lambda: qc.quantize(W() * np.float32(1e30), QuantConfig.q8_0()),
         VE, ["float16"]),
    Case("quantize-f32-range-overflow", lambda: qc.quantize(
        np.array([[-3e38, 3e38]], np.float32), QuantConfig(bits=8, symmetric=False)), VE, ["scale"]),
    Case("quantize-config-str", lambda: qc.quantize(W(), "int8"), TE, ["config"]),
    Case("quantize-config-dict", lambda: QuantizedTensor.quantize(W(), {"bits": 4}), TE, ["config"]),
    # ---- QuantizedTensor.from_arrays ------------------------------------------------------
    Case("from-arrays-data-dtype", lambda: _from_arrays(data=_qt().data.view(np.uint8)), TE, ["data", "dtype"]),
    Case("from-arrays-data-shape", lambda: _from_arrays(data=_qt().data[:, :-1]), VE, ["data", "shape"]),
    Case("from-arrays-data-list", lambda: _from_arrays(data=_qt().data.tolist()), TE, ["data"]),
    Case("from-arrays-scales-nan", lambda: _from_arrays(scales=np.full(8, np.nan, np.float32)), VE, ["scales"]),
    Case("from-arrays-scales-f64", lambda: _from_arrays(scales=np.ones(8)), TE, ["scales", "dtype"]),
    Case("from-arrays-scales-shape", lambda: _from_arrays(scales=np.ones(7, np.float32)), VE, ["scales", "shape"]),
    Case("from-arrays-zero-points-sym", lambda: _from_arrays(zero_points=np.zeros(8, np.uint8)), VE, ["zero_points"]),
    Case("from-arrays-zero-points-missing", lambda: _from_arrays(
        QuantConfig(bits=8, symmetric=False), zero_points=None), TE, ["zero_points"]),
    Case("from-arrays-zero-points-range", lambda: _from_arrays(
        QuantConfig(bits=4, symmetric=False, group_size=32),
        zero_points=np.full((8, 2), 16, np.uint8)), VE, ["zero_points"]),
    Case("from-arrays-shape-zero", lambda: _from_arrays(shape=(0, 64)), VE, ["shape"]),
    Case("from-arrays-shape-negative", lambda: _from_arrays(shape=(8, -64)), VE, ["shape"]),
    Case("from-arrays-shape-none", lambda: _from_arrays(shape=None), TE, ["shape"]),
    Case("from-arrays-shape-str", lambda: _from_arrays(shape="ab"), TVE, ["shape"]),
    Case("from-arrays-shape-float", lambda: _from_arrays(shape=(8.5, 64)), TVE, ["shape"]),
    Case("from-arrays-shape-huge", lambda: _from_arrays(shape=(2**62, 2**62)), VE, ["shape"]),
    Case("from-arrays-shape-2-70", lambda: _from_arrays(shape=(2**70,)), VE, ["shape"]),
    Case("from-arrays-dtype", lambda: QuantizedTensor.from_arrays(
        _qt().data, _qt().scales, None, (8, 64), QuantConfig.int8(), dtype="int32"), TE, ["dtype"]),
    Case("from-arrays-config", lambda: _from_arrays(config="int8"), TE, ["config"]),
    Case("from-arrays-int8-code-128", lambda: _from_arrays(data=_with(_qt().data, (0, 0), -128)),
         VE, ["data", "-128"]),
    # ---- dequantize / mse --------------------------------------------------------------------
    Case("dequantize-out-shape", lambda: _qt().dequantize(out=np.zeros((8, 63), np.float32)), VE, ["out", "shape"]),
    Case("dequantize-out-dtype", lambda: _qt().dequantize(out=np.zeros((8, 64))), TE, ["out", "float32"]),
    Case("dequantize-out-readonly", lambda: _qt().dequantize(out=_readonly(np.zeros((8, 64), np.float32))),
         VE, ["out", "writeable"]),
    Case("dequantize-out-noncontiguous", lambda: _qt().dequantize(out=np.zeros((64, 8), np.float32).T),
         VE, ["out", "contiguous"]),
    Case("dequantize-out-unaligned", lambda: _qt().dequantize(out=_unaligned((8, 64))), VE, ["out", "aligned"]),
    Case("dequantize-out-list", lambda: _qt().dequantize(out=[0.0] * 512), TE, ["out"]),
    Case("mse-reference-shape", lambda: _qt().mse(W(8, 63)), VE, ["reference", "shape"]),
    Case("mse-reference-int", lambda: _qt().mse(np.ones((8, 64), np.int64)), TE, ["reference"]),
    # ---- pack_int4 / unpack_int4 -------------------------------------------------------------
    Case("pack-float", lambda: qc.pack_int4(np.ones(4, np.float32)), TE, ["values"]),
    Case("pack-int8-8", lambda: qc.pack_int4(np.array([1, 8], np.int8)), VE, ["values", "8"]),
    Case("pack-uint8-16", lambda: qc.pack_int4(np.array([16], np.uint8)), VE, ["values", "16"]),
    Case("pack-int32-minus9", lambda: qc.pack_int4(np.array([-9, 1], np.int32)), VE, ["values"]),
    Case("pack-int64-huge", lambda: qc.pack_int4(np.array([2**40], np.int64)), VE, ["values"]),
    Case("pack-0d", lambda: qc.pack_int4(np.int8(1)), VE, ["values", "ndim"]),
    Case("pack-object", lambda: qc.pack_int4(np.array([1, None], object)), TE, ["values"]),
    Case("unpack-int8", lambda: qc.unpack_int4(np.zeros(2, np.int8), 4), TE, ["packed"]),
    Case("unpack-n-negative", lambda: qc.unpack_int4(np.zeros(2, np.uint8), -1), VE, ["n"]),
    Case("unpack-n-str", lambda: qc.unpack_int4(np.zeros(2, np.uint8), "3"), TVE, ["n"]),
    Case("unpack-n-bool", lambda: qc.unpack_int4(np.zeros(2, np.uint8), True), TVE, ["n"]),
    Case("unpack-n-too-many", lambda: qc.unpack_int4(np.zeros(2, np.uint8), 5), VE, ["n=5"]),
    Case("unpack-n-huge", lambda: qc.unpack_int4(np.zeros(2, np.uint8), 2**63), VE, ["n"]),
    Case("unpack-0d", lambda: qc.unpack_int4(np.uint8(1), 1), VE, ["packed"]),
    # ---- QuantizedLinear ---------------------------------------------------------------------
    Case("linear-ndarray", lambda: QuantizedLinear(W()), TE, ["weight_q", "QuantizedTensor"]),
    Case("linear-1d", lambda: QuantizedLinear(qc.quantize(np.ones(16, np.float32))), VE, ["weight_q", "2-D"]),
    Case("linear-3d", lambda: QuantizedLinear(qc.quantize(np.ones((2, 3, 16), np.float32))), VE, ["weight_q"]),
    Case("linear-group16", lambda: QuantizedLinear(_qt(QuantConfig(bits=4, group_size=16))), VE, ["group_size"]),
    Case("linear-huge-scales", lambda: QuantizedLinear(QuantizedTensor.from_arrays(
        _qt().data, np.full(8, 1e36, np.float32), None, (8, 64), QuantConfig.int8())), VE, ["scales"]),
    Case("linear-bias-shape", lambda: QuantizedLinear(_qt(), np.ones(7, np.float32)), VE, ["bias", "shape"]),
    Case("linear-bias-nan", lambda: QuantizedLinear(_qt(), _with(np.ones(8, np.float32), 3, np.nan)),
         VE, ["bias", "nan"]),
    Case("linear-bias-inf", lambda: QuantizedLinear(_qt(), _with(np.ones(8), 0, -np.inf)), VE, ["bias", "inf"]),
    Case("linear-bias-complex", lambda: QuantizedLinear(_qt(), np.ones(8, np.complex64)), TE, ["bias"]),
    Case("linear-bias-object", lambda: QuantizedLinear(_qt(), np.array([None] * 8)), TE, ["bias"]),
    Case("linear-bias-2d", lambda: QuantizedLinear(_qt(), np.ones((1, 8), np.float32)), VE, ["bias", "shape"]),
    Case("from-linear-1d", lambda: QuantizedLinear.from_linear(np.ones(16, np.float32)), VE, ["weight"]),
    Case("from-linear-nan", lambda: QuantizedLinear.from_linear(NAN_W), VE, ["weight", "nan"]),
    Case("from-linear-int", lambda: QuantizedLinear.from_linear(np.ones((4, 8), np.int16)), TE, ["weight"]),
    Case("from-linear-empty", lambda: QuantizedLinear.from_linear(np.ones((0, 8), np.float32)), VE, ["weight"]),
    Case("from-linear-config", lambda: QuantizedLinear.from_linear(W(), config="int8"), TE, ["config"]),
    Case("from-linear-group16", lambda: QuantizedLinear.from_linear(W(), config=QuantConfig(bits=4, group_size=16)),
         VE, ["group_size"]),
    Case("forward-k", lambda: _layer()(np.zeros((2, 63), np.float32)), VE, ["in_features"]),
    Case("forward-int", lambda: _layer()(np.zeros((2, 64), np.int32)), TE, ["x", "float"]),
    Case("forward-complex", lambda: _layer()(np.zeros((2, 64), np.complex64)), TE, ["x", "float"]),
    Case("forward-object", lambda: _layer()(np.array([[None] * 64])), TE, ["x"]),
    Case("forward-bool", lambda: _layer()(np.zeros((2, 64), bool)), TE, ["x"]),
    Case("forward-str", lambda: _layer()("abc"), TE, ["x"]),
    Case("forward-ragged", lambda: _layer()([[1.0] * 64, [1.0]]), TVE, ["x"]),
    Case("forward-0d", lambda: _layer()(np.float32(1.0)), VE, ["x", "0-d"]),
    Case("forward-out-shape", lambda: _layer()(np.zeros((2, 64), np.float32), out=np.zeros((2, 7), np.float32)),
         VE, ["out", "shape"]),
    Case("forward-out-dtype", lambda: _layer()(np.zeros((2, 64), np.float32), out=np.zeros((2, 8))),
         TE, ["out", "float32"]),
    Case("forward-out-readonly", lambda: _layer()(np.zeros((2, 64), np.float32),
                                                  out=_readonly(np.zeros((2, 8), np.float32))), VE, ["out", "writeable"]),
    Case("forward-out-noncontiguous", lambda: _layer()(np.zeros((2, 64), np.float32),
                                                       out=np.zeros((8, 2), np.float32).T), VE, ["out", "contiguous"]),
    Case("forward-out-unaligned", lambda: _layer()(np.zeros((2, 64), np.float32), out=_unaligned((2, 8))),
         VE, ["out", "aligned"]),
    Case("forward-out-list", lambda: _layer()(np.zeros((2, 64), np.float32), out=[0.0] * 16), TE, ["out"]),
    Case("forward-out-gemm-shape", lambda: _layer(q4)(np.zeros((9, 64), np.float32), out=np.zeros((9, 9), np.float32)),
         VE, ["out", "shape"]),
    # ---- runtime -------------------------------------------------------------------------------
    Case("threads-0", lambda: qc.set_num_threads(0), VE, ["n", ">= 1"]),
    Case("threads-negative", lambda: qc.set_num_threads(-3), VE, ["n"]),
    Case("threads-float", lambda: qc.set_num_threads(2.5), TE, ["n"]),
    Case("threads-str", lambda: qc.set_num_threads("2"), TE, ["n"]),
    Case("threads-bool", lambda: qc.set_num_threads(True), TE, ["n"]),
    Case("isa-unknown", lambda: qc.set_isa("sse9"), VE, ["isa", "sse9"]),
    Case("isa-int", lambda: qc.set_isa(3), TE, ["name"]),
    # ---- command line ---------------------------------------------------------------------------
    Case("cli-unknown-command", lambda: _cli("frobnicate"), VE, ["frobnicate"]),
    Case("cli-bench-threads-0", lambda: _cli("bench", "--threads", "0"), VE, ["--threads"]),
    Case("cli-bench-repeats-str", lambda: _cli("bench", "--repeats", "many"), VE, ["--repeats"]),
    Case("cli-bench-shapes", lambda: _cli("bench", "--shapes", "12", "--no-targets"), VE, ["--shapes"]),
    Case("cli-bench-configs", lambda: _cli("bench", "--quick", "--configs", "int3", "--ops", "quantize",
                                           "--no-targets"), VE, ["int3"]),
    Case("cli-quantize-missing", lambda: _cli("quantize", _missing(), "-o", _missing(), needs_cmd="quantize"),
         VE, ["does-not-exist"]),
    Case("cli-quantize-bits", lambda: _cli("quantize", _missing(), "-o", _missing(), "--bits", "3",
                                           needs_cmd="quantize"), VE, ["bits"]),
    Case("cli-quantize-group", lambda: _cli("quantize", _missing(), "-o", _missing(), "--group-size", "24",
                                            needs_cmd="quantize"), VE, ["group"]),
    Case("cli-inspect-missing", lambda: _cli("inspect", _missing(), needs_cmd="inspect"), VE, ["does-not-exist"]),
    Case("cli-inspect-hostile", lambda: _cli_file(safetensors_bytes({}, header_len=2**62), "inspect"),
         VE, ["header"]),
    Case("cli-inspect-garbage", lambda: _cli_file(b"\x00\x01garbage", "inspect"), VE, ["bad.safetensors"]),
    # ---- safetensors files (quantcore.save / load) -----------------------------------------------
    Case("load-missing", lambda: _need("load")(_missing()), OE, ["does-not-exist"], "load"),
    Case("load-directory", lambda: _need("load")(tempfile.mkdtemp()), OE + VE, [], "load"),
    Case("load-path-int", lambda: _need("load")(3.5), TE, ["path"], "load"),
    Case("load-empty", lambda: _load_bytes(b""), VE, [], "load"),
    Case("load-header-2-62", lambda: _load_bytes(safetensors_bytes({}, header_len=2**62)), VE, ["header"], "load"),
    Case("load-header-2-64-1", lambda: _load_bytes(safetensors_bytes({}, header_len=2**64 - 1)), VE, ["header"], "load"),
    Case("load-header-not-json", lambda: _load_bytes(safetensors_bytes(b"{not json")), VE, ["header"], "load"),
    Case("load-header-list", lambda: _load_bytes(safetensors_bytes([1, 2])), VE, [], "load"),
    Case("load-header-bad-utf8", lambda: _load_bytes(safetensors_bytes(b'{"\xff\xfe": 1}')), VE, [], "load"),
    Case("load-offsets-outside", lambda: _load_bytes(safetensors_bytes(
        {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8)), VE, [], "load"),
    Case("load-offsets-huge", lambda: _load_bytes(safetensors_bytes(
        {"w": {"dtype": "U8", "shape": [2**62], "data_offsets": [0, 2**62]}}, b"\0" * 8)), VE, [], "load"),
    Case("load-shape-mismatch", lambda: _load_bytes(safetensors_bytes(
        {"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 16]}}, b"\0" * 16)), VE, [], "load"),
    Case("load-bad-dtype", lambda: _load_bytes(safetensors_bytes(
        {"w": {"dtype": "Q9", "shape": [4], "data_offsets": [0, 4]}}, b"\0" * 4)), VE, [], "load"),
    Case("load-truncated", lambda: _load_bytes(_valid_safetensors()[:-7]), VE, [], "load"),
    Case("load-truncated-header", lambda: _load_bytes(_valid_safetensors()[:20]), VE, [], "load"),
    Case("save-not-mapping", lambda: _need("save")(_missing(), [1, 2]), TE, ["tensors"], "save"),
    Case("save-bad-value", lambda: _need("save")(_missing(), {"w": "text"}), TE, ["w"], "save"),
    # ---- GGUF ----------------------------------------------------------------------------------
    Case("gguf-missing", lambda: _need("gguf.load")(_missing()), OE, ["does-not-exist"], "gguf.load"),
    Case("gguf-empty", lambda: _gguf_load_bytes(b""), VE, [], "gguf.load"),
    Case("gguf-bad-magic", lambda: _gguf_load_bytes(b"GGUX" + _gguf_valid()[4:]), VE, [], "gguf.load"),
    Case("gguf-truncated-tensor", lambda: _gguf_load_bytes(_gguf_valid()[:-100]), VE, [], "gguf.load"),
    Case("gguf-truncated-header", lambda: _gguf_load_bytes(_gguf_valid()[:30]), VE, [], "gguf.load"),
    Case("gguf-n-tensors-2-62", lambda: _gguf_load_bytes(_gguf_patch(8, "<Q", 2**62)), VE, [], "gguf.load"),
    Case("gguf-n-kv-2-62", lambda: _gguf_load_bytes(_gguf_patch(16, "<Q", 2**62)), VE, [], "gguf.load"),
    Case("gguf-version-99", lambda: _gguf_load_bytes(_gguf_patch(4, "<I", 99)), VE, [], "gguf.load"),
    # ---- pruning, metrics, whole models ------------------------------------------------------------
    Case("prune-sparsity-1.5", lambda: _need("prune_magnitude")(W(), 1.5), VE, ["sparsity"], "prune_magnitude"),
    Case("prune-sparsity-negative", lambda: _need("prune_magnitude")(W(), -0.1), VE, ["sparsity"], "prune_magnitude"),
    Case("prune-sparsity-nan", lambda: _need("prune_magnitude")(W(), float("nan")), VE, ["sparsity"], "prune_magnitude"),
    Case("prune-sparsity-str", lambda: _need("prune_magnitude")(W(), "0.5"), TE, ["sparsity"], "prune_magnitude"),
    Case("prune-complex", lambda: _need("prune_magnitude")(np.ones((2, 4), np.complex64), 0.5), TE, ["array"],
         "prune_magnitude"),
    Case("prune-empty", lambda: _need("prune_magnitude")(np.zeros((0, 4), np.float32), 0.5), VE, ["array"],
         "prune_magnitude"),
    Case("metrics-negative-count", lambda: _need("CompressionMetrics").quantized_only(-1, 4, 0.0), VE,
         ["n_parameters"], "CompressionMetrics"),
    Case("metrics-zero-bits", lambda: _need("CompressionMetrics").quantized_only(10, 0, 0.0), VE,
         ["bits"], "CompressionMetrics"),
    Case("metrics-sparsity", lambda: _need("CompressionMetrics").pruned_only(10, 1.5), VE,
         ["sparsity"], "CompressionMetrics"),
    Case("model-metrics-empty", lambda: _need("ModelCompressionMetrics")().add_quantized_layer(
        "a", np.zeros((0, 4), np.float32), 4), VE, ["weights"], "ModelCompressionMetrics"),
    Case("quantize-model-not-mapping", lambda: _need("quantize_model")([W()], QuantConfig.int8(), progress=False),
         TE, ["weights"], "quantize_model"),
    Case("quantize-model-config", lambda: _need("quantize_model")({"w": W()}, "int8", progress=False),
         TE, ["config"], "quantize_model"),
    Case("quantize-model-nan", lambda: _need("quantize_model")({"layer.w": NAN_W}, QuantConfig.int8(),
                                                               progress=False), VE, ["layer.w"], "quantize_model"),
]

_BY_ID = {c.id: c for c in CASES}
assert len(_BY_ID) == len(CASES), "duplicate case ids"


def child_cases():
    """For tests/caserunner.py: the callables by id."""
    return {c.id: c.fn for c in CASES}


@pytest.fixture(scope="module")
def outcomes():
    return run_cases("test_bad_inputs", [c.id for c in CASES])


def test_matrix_is_big_enough():
    assert len(CASES) >= 40


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, outcomes):
    res = outcomes[case.id]
    if res["status"] == "skip":
        pytest.skip(res["msg"])
    assert res["status"] != "crash", f"{case.id}: CRASH: {res['msg']}"
    assert res["status"] == "raised", f"{case.id}: no exception (expected {case.exc})"
    want = [e.__name__ for e in case.exc]
    assert any(w in res["mro"] for w in want), (
        f"{case.id}: raised {res['type']}: {res['msg']!r}; expected one of {want}")
    msg = res["msg"].lower()
    missing = [w for w in case.words if w.lower() not in msg]
    assert not missing, f"{case.id}: message {res['msg']!r} does not name {missing}"


# ---- NaN / Inf in activations ---------------------------------------------------------------
FORMATS = {
    "int8": QuantConfig.int8(), "uint8": QuantConfig(bits=8, symmetric=False),
    "int4_g32": QuantConfig.int4(), "uint4_g64": QuantConfig(bits=4, symmetric=False, group_size=64),
    "q8_0": QuantConfig.q8_0(), "q4_0": QuantConfig.q4_0(), "q4_1": QuantConfig.q4_1(),
    "int4_tensor": QuantConfig.int4(granularity="tensor"),
}


@pytest.mark.parametrize("m", [4, 11], ids=["gemv", "gemm"])
@pytest.mark.parametrize("compute", ["float32", "int8"])
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_nonfinite_activations_propagate_per_row(fmt, compute, m, isa):
    rng = np.random.default_rng(7)
    k, n = 100, 37
    layer = QuantizedLinear.from_linear(rng.standard_normal((n, k)).astype(np.float32),
                                        rng.standard_normal(n).astype(np.float32),
                                        FORMATS[fmt].replace(compute=compute))
    x = rng.standard_normal((m, k)).astype(np.float32)
    clean = layer(x)
    bad = x.copy()
    bad[1, 7] = np.nan
    bad[m - 1, k - 1] = np.inf
    bad[0, 0] = -np.inf
    bad[0, 1] = np.inf  # inf - inf: NaN
    before = bad.copy()
    y = layer(bad)
    np.testing.assert_array_equal(bad, before)  # the input is untouched
    assert np.all(np.isnan(y[1])), "a NaN in a row makes every output of that row NaN"
    # rows with infinities: each output is NaN, +inf or -inf exactly as IEEE arithmetic
    # over the dequantized weight says (the class does not depend on the summation order)
    with np.errstate(invalid="ignore"):
        ref = bad.astype(np.float64) @ layer.dequantized_weight().astype(np.float64).T

    def cls(v):
        return np.where(np.isnan(v), 0, np.where(np.isposinf(v), 1, np.where(np.isneginf(v), -1, 2)))

    for r in (0, m - 1):
        np.testing.assert_array_equal(cls(y[r]), cls(ref[r]), err_msg=f"row {r}")
        assert not np.any(np.isfinite(y[r]))
    clean_rows = [r for r in range(m) if r not in (0, 1, m - 1)]
    # other rows: bit for bit as without the bad ones (per-row arithmetic)
    np.testing.assert_array_equal(y[clean_rows].view(np.uint32), clean[clean_rows].view(np.uint32))
