"""Fuzz harness for quantcore's loaders: bytes in, either a clean TypeError /
ValueError / OSError or a correct result out -- never a crash, a hang or another
exception.

The first byte of an input picks the target:

* ``0``: ``QuantizedTensor.from_arrays`` with a config, shape and stored arrays
  decoded from the bytes, then ``dequantize()`` (checked bit for bit against the
  NumPy oracle) and, for 2-D tensors a QuantizedLinear can take, ``forward`` with
  both compute modes (checked against ``x @ dequantize(W).T``);
* ``1``: the bytes as a safetensors file for ``quantcore.load`` (when it exists);
* ``2``: the bytes as a GGUF file for ``quantcore.gguf.load`` (when it exists).

Run by hand (atheris installed)::

    python tests/fuzz/fuzz_loaders.py tests/fuzz/corpus -max_total_time=600

CI runs it for a few seconds through tests/test_fuzz.py, which also replays
every file of tests/fuzz/corpus (seeds and the cases found so far) without
atheris.  A crash atheris finds is written as ``crash-<sha1>``; copy it into
tests/fuzz/corpus/ once fixed so that it stays a regression test.
"""

from __future__ import annotations

import os
import struct
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # tests/: the oracle

import numpy as np  # noqa: E402

EXPECTED = (TypeError, ValueError, OSError)


class Bytes:
    """A cursor over the input: small integers and raw slices, zeros past the end."""

    def __init__(self, data: bytes):
        self.b = data
        self.i = 0

    def u8(self) -> int:
        v = self.b[self.i] if self.i < len(self.b) else 0
        self.i += 1
        return v

    def take(self, n: int) -> bytes:
        out = self.b[self.i:self.i + n]
        self.i += n
        return out

    def rest(self) -> bytes:
        out = self.b[self.i:]
        self.i = len(self.b)
        return out


def _configs():
    from quantcore import QuantConfig
    return [QuantConfig.int8(), QuantConfig(bits=8, symmetric=False), QuantConfig.int4(),
            QuantConfig(bits=4, symmetric=False, group_size=64), QuantConfig(bits=4, group_size=16),
            QuantConfig.q8_0(), QuantConfig.q4_0(), QuantConfig.q4_1(),
            QuantConfig.int4(granularity="tensor"), QuantConfig(bits=8, scale_dtype="float16"),
            QuantConfig(bits=4, symmetric=False, granularity="channel", scale_dtype="float16")]


def _array(r: Bytes, dtype, shape, perturb: int) -> np.ndarray:
    """An array of `shape` filled from the input (cycled), maybe of a wrong shape or dtype."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape)) if len(shape) else 1
    raw = r.take(min(n * dtype.itemsize, 4096))
    if not raw:
        raw = b"\x01"
    buf = (raw * (n * dtype.itemsize // len(raw) + 1))[:n * dtype.itemsize]
    a = np.frombuffer(buf, dtype=dtype).reshape(shape).copy()
    if perturb == 1 and a.ndim:
        a = a[..., :-1] if a.shape[-1] > 1 else a[..., None]
    elif perturb == 2:
        a = a.astype(np.float64 if dtype.kind != "f" else np.int16)
    elif perturb == 3 and a.ndim:
        a = a[::-1]
    return a


def _from_arrays(r: Bytes) -> None:
    import oracle as O
    from quantcore import QuantizedLinear, QuantizedTensor, _ext

    cfgs = _configs()
    cfg = cfgs[r.u8() % len(cfgs)]
    rank = 1 + r.u8() % 3
    shape = tuple(1 + r.u8() % 70 for _ in range(rank))
    flags = r.u8()
    k = shape[-1]
    rows = int(np.prod(shape[:-1]))
    kind = cfg.kind
    group = cfg.group_size if cfg.granularity == "group" else 0
    per_tensor = cfg.granularity == "tensor"
    ng = _ext.num_groups(k, group)
    lead = shape[:-1]
    pshape = () if per_tensor else (lead if cfg.granularity == "channel" else lead + (ng,))
    rb = _ext.row_bytes(kind, k)
    data = _array(r, np.int8 if kind == _ext.KIND_SYM8 else np.uint8, lead + (rb,), flags & 3)
    sdt = np.float16 if cfg.scale_dtype == "float16" else np.float32
    scales = _array(r, sdt, pshape, (flags >> 2) & 3)
    if kind in (_ext.KIND_ASYM8, _ext.KIND_ASYM4):
        zeros = _array(r, np.uint8, pshape, (flags >> 4) & 3)
    elif kind == _ext.KIND_MIN4:
        zeros = _array(r, sdt, pshape, (flags >> 4) & 3)
    else:
        zeros = None if not (flags & 0x40) else np.zeros(pshape, np.uint8)
    if flags & 0x80:  # now and then a shape that disagrees with the arrays
        shape = shape[:-1] + (k + 1 + r.u8() % 3,)
    try:
        qt = QuantizedTensor.from_arrays(data, scales, zeros, shape, cfg)
    except EXPECTED:
        return
    # accepted: the arrays were right; dequantize must be the oracle's, bit for bit
    shape = qt.shape
    k, rows = shape[-1], int(np.prod(shape[:-1]))
    ng, rb = _ext.num_groups(k, group), _ext.row_bytes(kind, k)
    deq = qt.dequantize()
    d2 = np.ascontiguousarray(qt.data).reshape(rows, rb)
    s2 = np.asarray(qt.scales).reshape(1 if per_tensor else rows, -1)
    z2 = None if qt.zero_points is None else np.asarray(qt.zero_points).reshape(s2.shape)
    want = O.dequantize(d2, s2, z2, kind, rows, k, group, per_tensor)
    assert deq.reshape(rows, k).tobytes() == want.tobytes(), "dequantize differs from the oracle"
    if qt.ndim != 2 or (group and group < k and group % 32):
        return
    m = 1 + r.u8() % 10
    x = _array(r, np.float32, (m, k), 0)
    x = np.where(np.isfinite(x), np.clip(x, -1e4, 1e4), x).astype(np.float32)
    w = want.astype(np.float64)
    # The float32 kernels factor each group as d * sum(x q) + c * sum(x) (c the
    # group's offset: -d z, -8 d or m), so their rounding scales with
    # |x| (|d| qmax + |c|), not only |x| |W|: bound with that.
    dexp = np.abs(O._expand(s2.astype(np.float64), rows, k, group, per_tensor))
    wmag = np.abs(w) + dexp * (O.QMAX[kind] + 1)
    if kind == _ext.KIND_MIN4:
        wmag = wmag + np.abs(O._expand(z2.astype(np.float64), rows, k, group, per_tensor))
    for compute in ("float32", "int8"):
        try:
            layer = QuantizedLinear(QuantizedTensor.from_arrays(
                qt.data, qt.scales, qt.zero_points, qt.shape, cfg.replace(compute=compute)))
        except EXPECTED:  # scales beyond what the kernels take
            assert np.max(np.abs(wmag)) > 1e30
            return
        with np.errstate(all="ignore"):
            y = layer(x)
            ref = x.astype(np.float64) @ w.T
        assert y.shape == (m, shape[0]) and y.dtype == np.float32
        ok = np.all(np.isfinite(x), axis=1) & np.all(np.isfinite(ref), axis=1)
        if not ok.any():
            continue
        mag = np.abs(x[ok]).astype(np.float64) @ wmag.T
        tol = 4 * (k + 4) * 2**-23 * mag + 1e-30
        if compute == "int8":
            # + blocks whose max |x| is below ~127 * FLT_MIN have no representable
            # activation scale and count as zeros (as weight groups do)
            tol = (tol + layer.int8_error_bound(x[ok]) * 1.0001 + mag * 2**-20
                   + 2e-36 * wmag.sum(axis=1)[None, :])
        err = np.abs(y[ok].astype(np.float64) - ref[ok])
        finite = np.isfinite(tol) & (mag < 1e30)  # float32 overflow is IEEE, not a bug
        assert np.all(err[finite] <= tol[finite]), f"forward ({compute}) off by {np.max(err - tol):.3g}"


def _file(r: Bytes, name: str, suffix: str) -> None:
    import importlib
    mod, _, fn = name.rpartition(".")
    try:
        target = getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError):
        return  # not implemented in this tree yet
    content = r.rest()
    fd, path = tempfile.mkstemp(suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
        try:
            target(path)
        except EXPECTED:
            pass
    finally:
        os.unlink(path)


TARGETS = {0: _from_arrays, 1: lambda r: _file(r, "quantcore.load", ".safetensors"),
           2: lambda r: _file(r, "quantcore.gguf.load", ".gguf")}


def TestOneInput(data: bytes) -> None:  # noqa: N802 (atheris' name)
    r = Bytes(data)
    TARGETS[r.u8() % len(TARGETS)](r)


# ---- seeds ---------------------------------------------------------------------------------
def seeds():
    """{name: bytes}: valid and nearly valid inputs for every target (tests/fuzz/corpus)."""
    import json
    out = {}
    for i in range(len(_configs())):
        out[f"from_arrays-cfg{i}"] = bytes([0, i, 1, 33, 17, 0x00]) + bytes(range(256)) * 2
        out[f"from_arrays-cfg{i}-badshape"] = bytes([0, i, 2, 5, 40, 0x81]) + bytes(range(7, 200))
    h = json.dumps({"__metadata__": {"format": "pt"},
                    "w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}).encode()
    out["safetensors-plain"] = b"\x01" + struct.pack("<Q", len(h)) + h + struct.pack("<4f", 1, 2, 3, 4)
    out["safetensors-huge-header"] = b"\x01" + struct.pack("<Q", 2**62) + b"{}"
    try:
        import quantcore as qc
        if hasattr(qc, "save"):
            d = tempfile.mkdtemp()
            p = os.path.join(d, "s.safetensors")
            qc.save(p, {"w": qc.quantize(np.ones((4, 64), np.float32), qc.QuantConfig.int4())})
            out["safetensors-quantcore"] = b"\x01" + open(p, "rb").read()
        import gguf
        d = tempfile.mkdtemp()
        p = os.path.join(d, "s.gguf")
        wr = gguf.GGUFWriter(p, "llama")
        wr.add_tensor("w", np.arange(64, dtype=np.float32).reshape(2, 32))
        wr.write_header_to_file()
        wr.write_kv_data_to_file()
        wr.write_tensors_to_file()
        wr.close()
        g = open(p, "rb").read()
        out["gguf-f32"] = b"\x02" + g
        out["gguf-truncated"] = b"\x02" + g[:-40]
    except ImportError:
        pass
    return out


def main() -> None:
    import atheris
    with atheris.instrument_imports():
        import quantcore  # noqa: F401
        import quantcore.tensor  # noqa: F401
        for extra in ("quantcore.files", "quantcore.gguf"):
            try:
                __import__(extra)
            except ImportError:
                pass
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--write-seeds":
        corpus = os.path.join(HERE, "corpus")
        os.makedirs(corpus, exist_ok=True)
        for name, content in seeds().items():
            with open(os.path.join(corpus, f"seed-{name}"), "wb") as f:
                f.write(content)
        print(f"wrote {len(seeds())} seeds to {corpus}")
    else:
        main()
