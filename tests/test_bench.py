"""The bench package's parts without timing anything long: cache sizes read from
the machine (sysfs, then sysconf, then an assumption), the size classes and
layer copies they set, and the report (columns only for installed peers, a
legend, %bw above 100% never without its footnote, lines within 100 columns);
the rows each case runs (the linear batch sizes, the K-quant rows), ``--load``
(its busy process always stopped, the p90 and quiet 1-thread columns), the
K-quant rows with and without a quantcore kernel and without ggml-python."""

import contextlib
import io
import json
import math
import os

import numpy as np
import pytest

from quantcore.bench import CASES, BenchContext, BenchError, Result, kquant
from quantcore.bench import linear as blinear
from quantcore.bench import machine, report, run, timing
from quantcore.bench.peers import PEERS
from quantcore.bench.timing import Timing


def _cache_dir(root, entries):
    for i, (level, kind, size) in enumerate(entries):
        d = root / f"index{i}"
        d.mkdir(parents=True)
        (d / "level").write_text(f"{level}\n")
        (d / "type").write_text(f"{kind}\n")
        (d / "size").write_text(f"{size}\n")
    return str(root)


def test_cache_sizes_from_sysfs(tmp_path):
    root = _cache_dir(tmp_path / "a", [(1, "Data", "48K"), (1, "Instruction", "32K"),
                                       (2, "Unified", "2048K"), (3, "Unified", "96M")])
    c = machine.cache_sizes(root)
    assert (c.l1d, c.l2, c.l3, c.source) == (48 << 10, 2 << 20, 96 << 20, "sysfs")
    assert c.last_level == 96 << 20
    assert c.describe() == "L1d 48 KiB, L2 2 MiB, L3 96 MiB (sysfs)"
    # no L3: the L2 is the last level
    root = _cache_dir(tmp_path / "b", [(1, "Data", "64K"), (2, "Unified", "4096K")])
    c = machine.cache_sizes(root)
    assert (c.l3, c.last_level) == (0, 4 << 20) and "L3" not in c.describe()


def test_cache_sizes_without_sysfs(tmp_path, monkeypatch):
    monkeypatch.setattr(machine, "_from_sysconf", lambda: (32768, 1 << 20, 8 << 20))
    c = machine.cache_sizes(str(tmp_path / "missing"))
    assert (c.l1d, c.l2, c.l3, c.source) == (32768, 1 << 20, 8 << 20, "sysconf")
    monkeypatch.setattr(machine, "_from_sysconf", lambda: None)
    c = machine.cache_sizes(str(tmp_path / "missing-too"))
    assert c.source == "assumed" and c.l1d > 0 and c.l2 > 0 and c.l3 > 0


def test_this_machine_reports_its_caches():
    c = machine.cache_sizes()
    assert c.source in ("sysfs", "sysconf", "assumed")
    assert 0 < c.l1d < c.last_level


def test_size_classes_and_copies_follow_the_caches():
    small = machine.Caches(32 << 10, 1 << 20, 32 << 20, "sysfs")
    big = machine.Caches(48 << 10, 2 << 20, 96 << 20, "sysfs")
    for c in (small, big):
        classes = machine.size_classes(c)
        for name, cache in (("L1", c.l1d), ("L2", c.l2), ("L3", c.l3)):
            rows, cols = classes[name]
            assert rows * cols * 4 <= cache // 2 < (rows + 1) * cols * 4, (name, classes[name])
        rows, cols = classes["DRAM"]
        assert rows * cols * 4 >= 4 * c.l3
    assert machine.size_classes(small)["L3"] == (1024, 4096)
    # copies of a layer exceed 4x the last-level cache (at most MAX_COPIES)
    for nbytes in (1 << 20, 30 << 20, 200 << 20):
        n = machine.layer_copies(nbytes, big)
        assert n == machine.MAX_COPIES or n * nbytes >= 4 * big.last_level
        assert n == 1 or (n - 1) * nbytes < 4 * big.last_level
    assert machine.layer_copies(1, big) == machine.MAX_COPIES


def test_read_probe_reads_what_it_is_given():
    fn = machine.read_probe(1000, 3)  # rounded up to whole cache lines
    assert isinstance(fn(), int) and isinstance(fn(), int)


def _timing(s):
    return Timing(s, s, s, 1, 1)


def _linear_result(ms, probe_ms, resident=False):
    peers = {"numpy": {"timing": _timing(2 * ms / 1e3), "note": ""},
             "torch": {"timing": None, "note": "not installed"}}
    return Result("linear", "int8/i8", (1, 4096, 4096), 2, _timing(ms / 1e3), 16 << 20,
                  2 * 4096 * 4096, peers, {"cache_resident": resident}, _timing(probe_ms / 1e3))


def test_bandwidth_column_and_its_footnote():
    t = report.Table(CASES["linear"], ["numpy", "naive"])
    line = t.row(_linear_result(2.0, 1.0)).splitlines()[-1]
    assert " 50% " in line and t.footnote(32 << 20) == ""
    line = t.row(_linear_result(1.0, 1.25, resident=True)).splitlines()[-1]
    assert "125%*" in line
    note = t.footnote(32 << 20)
    assert note.startswith("* above 100%") and "caches" in note
    t2 = report.Table(CASES["linear"], ["numpy"])
    t2.row(_linear_result(1.0, 1.5))
    assert "other work" in t2.footnote(32 << 20)


def test_columns_only_for_installed_peers_and_a_legend():
    t = report.Table(CASES["linear"], ["numpy", "naive"])
    head = t.header().splitlines()[-2].split()
    assert head[:6] == ["config", "M", "ms", "GB/s", "%bw", "GFLOP/s"]
    assert head[6:] == [PEERS["numpy"].label, PEERS["naive"].label]
    row = t.row(_linear_result(1.0, 0.5))
    assert row.splitlines()[0] == "K=4096 N=4096"
    cells = row.splitlines()[1].split()
    assert cells[-2] == "2.00x" and cells[-1] == "-"      # naive was not timed in this row
    text = report.legend([t], threads=2, blas_pinned=False)
    flat = " ".join(text.split())
    assert "np = NumPy" in flat and "naive = " in flat and "pt = " not in flat
    assert "not measured: pt, pt8 (pip install torch); ort0, ort4" in flat
    assert "threadpoolctl" in flat
    for line in (t.header() + "\n" + text).splitlines():
        assert len(line) <= report.WIDTH, line


def test_bench_in_process_without_some_peers(monkeypatch):
    """A peer whose package is missing gets no column, only a line in the legend."""
    monkeypatch.setattr(report, "installed", lambda p: p in ("numpy", "naive"))
    out = io.StringIO()
    doc = run.bench(shapes=[(32, 64)], ops=["quantize", "linear"], configs=["q8_0"], repeats=1,
                    quick=True, stream=out)
    text = out.getvalue()
    heads = [line.split() for line in text.splitlines() if line.startswith("config")]
    assert heads[0] == ["config", "shape", "ms", "GB/s", "np"]
    assert heads[1][-2:] == ["np", "naive"]
    assert "not measured: gguf (pip install gguf); pt, pt8" in " ".join(text.split())
    for line in text.splitlines():
        assert len(line) <= report.WIDTH, line
    assert all(math.isfinite(r["ms"]) for r in doc["results"])
    assert "targets" not in doc


@pytest.mark.parametrize("bad", ["64", "64x", "0x64", "axb", ""])
def test_parse_shapes_rejects(bad):
    from quantcore.bench import BenchError, parse_shapes
    with pytest.raises(BenchError, match="--shapes"):
        parse_shapes(bad)


# ---- rows, --load and the K-quant cases ------------------------------------------------

def _alive(pid):
    """Whether process `pid` still exists (a reaped child does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def test_linear_rows_cover_every_batch_size():
    ctx = BenchContext([(4096, 4096)], ["int8"], threads=2)
    grid = blinear._grid(ctx)
    for kn in ((4096, 4096), (4096, 14336), (14336, 4096)):
        ms = sorted({s[0] for c, s in grid if s[1:] == kn})
        assert ms == [1, 2, 4, 8, 16, 32, 128, 512], (kn, ms)
    assert {c for c, _ in grid} == set(blinear.LINEAR_CONFIGS)
    quick = blinear._grid(BenchContext([(64, 256)], ["int8"], threads=2, quick=True))
    assert sorted({s[0] for _, s in quick}) == [1, 4, 32] and len(quick) == 12


def test_kquant_rows():
    grid = kquant._linear_grid(BenchContext([(4096, 4096)], ["int8"], threads=2))
    assert {c for c, _ in grid} == {"q4_k/i8", "q5_k/i8", "q6_k/i8"}
    assert {s for _, s in grid} == {(1, 4096, 14336), (1, 14336, 4096), (128, 4096, 14336)}
    quick = kquant._linear_grid(BenchContext([(64, 256)], ["int8"], threads=2, quick=True))
    assert quick == [("q4_k/i8", (1, 1024, 4096)), ("q4_k/i8", (32, 1024, 4096))]
    # --shapes N x K: M = 1 on the layers whose K is a multiple of 256
    custom = kquant._linear_grid(BenchContext([(64, 256), (64, 96)], ["int8"], threads=2,
                                              custom_shapes=True))
    assert {s for _, s in custom} == {(1, 256, 64)}
    qgrid = kquant._quantize_grid(BenchContext([(4096, 4096)], ["int8"], threads=2))
    assert qgrid == [(f, (4096, 4096)) for f in ("q4_k", "q5_k", "q6_k")]


def test_percentile_and_single_call_samples():
    assert timing.percentile([float(i) for i in range(1, 11)], 90) == 9.0
    assert timing.percentile([3.0], 90) == 3.0
    calls = []
    t, out = timing.measure(lambda: calls.append(1) or len(calls), repeats=7, min_sample_s=0.0)
    assert t.number == 1 and t.samples == 7 and t.min <= t.median <= t.p90 <= t.max
    assert len(calls) == 8 and out == 8                 # one warm-up call, then one per sample
    assert t.to_dict()["p90_s"] == t.p90


def test_busy_core_starts_and_always_stops():
    with machine.busy_core() as pid:
        assert _alive(pid)
        if os.path.exists(f"/proc/{pid}/stat"):         # Linux: it is running, not sleeping
            with open(f"/proc/{pid}/stat") as f:
                assert f.read().rsplit(")", 1)[1].split()[0] in ("R", "S")
    assert not _alive(pid)
    for exc in (RuntimeError("boom"), KeyboardInterrupt()):
        with pytest.raises(type(exc)):
            with machine.busy_core() as pid:
                raise exc
        assert not _alive(pid), type(exc)


def _gone(pid, timeout_s=10.0):
    """Whether `pid` exits (or is left a zombie, which spins no more) within the timeout."""
    import time
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                    return True
        except OSError:
            pass
        time.sleep(0.05)
    return False


@pytest.mark.skipif(not hasattr(os, "getppid") or os.name != "posix",
                    reason="the busy process watches its parent with getppid (POSIX)")
def test_busy_core_outlives_no_killed_parent():
    """A parent that dies without cleaning up (os._exit, SIGKILL) leaves no spinner."""
    import subprocess
    import sys
    code = ("import os, sys\n"
            "from quantcore.bench.machine import busy_core\n"
            "with busy_core() as pid:\n"
            "    print(pid, flush=True)\n"
            "    os._exit(0)\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(os.path.dirname(
        os.path.abspath(machine.__file__)))] + [env.get("PYTHONPATH", "")])
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=60)
    assert p.returncode == 0, p.stderr
    assert _gone(int(p.stdout.split()[0]))


def test_busy_core_that_cannot_start(monkeypatch):
    monkeypatch.setattr(machine, "_SPINNER", "import sys; sys.exit(3)")
    with pytest.raises(machine.BusyCoreError, match="exited at start"):
        with machine.busy_core():
            pass  # pragma: no cover


@contextlib.contextmanager
def _recording_busy_core(pids):
    with machine.busy_core() as pid:
        pids.append(pid)
        yield pid


def test_load_mode_reports_tails_and_stops_its_process(monkeypatch, tmp_path):
    pids = []
    monkeypatch.setattr(run, "busy_core", lambda: _recording_busy_core(pids))
    out = io.StringIO()
    path = tmp_path / "load.json"
    doc = run.bench(shapes=[(64, 256)], quick=True, repeats=3, load=True, json_path=str(path),
                    stream=out)
    text = out.getvalue()
    lin = [r for r in doc["results"] if r["op"] == "linear"]
    assert {r["op"] for r in doc["results"]} == {"linear"}     # --load runs the linear rows
    assert sorted({r["shape"][0] for r in lin}) == [1, 4, 32]
    assert len(pids) == len(lin) and not any(_alive(p) for p in pids)
    for r in lin:
        ld = r["load"]
        assert ld["busy_processes"] == 1 and ld["quiet_1thread_ms"] > 0
        assert ld["p90_over_quiet_1thread"] == pytest.approx(r["p90_ms"] / ld["quiet_1thread_ms"])
        assert r["timing"]["calls_per_sample"] == 1 and r["p90_ms"] >= r["ms"] > 0
        assert "naive" not in r["peers"]
        assert r["peers"]["numpy"]["p90_ms"] >= r["peers"]["numpy"]["ms"] > 0
    assert doc["settings"]["load"] is True
    assert json.loads(path.read_text())["results"][0]["load"]["quiet_1thread_ms"] > 0
    head = [line.split() for line in text.splitlines() if line.startswith("config")][0]
    assert head[:6] == ["config", "M", "ms", "p90", "1t", "p90/1t"]
    assert "np" in head and "naive" not in head
    for line in text.splitlines():
        assert len(line) <= report.WIDTH, line
    assert "spinning on one core" in " ".join(text.split())


def test_load_mode_stops_its_process_on_error(monkeypatch):
    pids = []
    monkeypatch.setattr(run, "busy_core", lambda: _recording_busy_core(pids))
    real = run.measure

    def failing(fn, *a, **kw):
        if pids:
            raise KeyboardInterrupt  # as Ctrl-C during a loaded measurement
        return real(fn, *a, **kw)
    monkeypatch.setattr(run, "measure", failing)
    with pytest.raises(KeyboardInterrupt):
        run.bench(shapes=[(64, 256)], quick=True, repeats=1, load=True, stream=io.StringIO())
    assert len(pids) == 1 and not _alive(pids[0])


def test_load_mode_refuses_other_ops():
    with pytest.raises(BenchError, match="--load runs the linear rows"):
        run.bench(shapes=[(64, 256)], quick=True, load=True, ops=["quantize"],
                  stream=io.StringIO())


def test_kquant_rows_without_a_quantcore_kernel(monkeypatch):
    """Where QuantizedLinear cannot run a K-quant format the row says n/a, with a
    footnote, and ggml (when installed) is still timed."""
    def refuse(*a, **kw):
        raise NotImplementedError("no K-quant kernel")
    monkeypatch.setattr(kquant, "QuantizedLinear", refuse)
    out = io.StringIO()
    doc = run.bench(shapes=[(64, 256)], ops=["kquant", "kquantize"], quick=True, repeats=1,
                    stream=out)
    text = out.getvalue()
    rows = [r for r in doc["results"] if r["op"] == "kquant"]
    assert [tuple(r["shape"]) for r in rows] == [(1, 256, 64)]
    assert rows[0]["ms"] is None and rows[0]["unavailable"] == "no K-quant kernel"
    assert " n/a " in text and "n/a: quantcore has no kquant kernel for q4_k/i8" in text
    q = [r for r in doc["results"] if r["op"] == "kquantize"]
    assert [(r["config"], tuple(r["shape"])) for r in q] == [("q4_k", (64, 256))]
    assert q[0]["mweights_per_s"] > 0
    if kquant.ggml_module() is not None:
        assert rows[0]["peers"]["ggml"]["ms"] > 0
        assert q[0]["checks"]["ggml_bit_exact"] is True
    for line in text.splitlines():
        assert len(line) <= report.WIDTH, line


class _DequantLinear:
    """Stands in for a K-quant QuantizedLinear: x @ dequantize(W).T."""

    def __init__(self, qt):
        self.w = qt.dequantize()
        self.nbytes = qt.nbytes

    def forward(self, x, out=None):
        return np.matmul(x, self.w.T, out=out)


def test_kquant_rows_run_when_quantcore_can(monkeypatch):
    monkeypatch.setattr(kquant, "QuantizedLinear", _DequantLinear)
    out = io.StringIO()
    doc = run.bench(shapes=[(64, 256)], ops=["kquant"], quick=True, repeats=1, stream=out)
    (r,) = doc["results"]
    assert r["ms"] > 0 and r["unavailable"] is None and r["gflops"] > 0
    assert r["probe_gbps"] > 0 and r["nbytes"] == 64 * 144
    if kquant.ggml_module() is not None:
        assert r["peers"]["ggml"]["speedup"] > 0
        assert r["checks"]["weight_source"] == "ggml_quantize_chunk"
        assert r["checks"]["max_rel_diff_vs_ggml"] < 0.05   # ggml rounds x to Q8_K
    assert " n/a " not in out.getvalue() and "n/a:" not in out.getvalue()


def test_kquant_without_ggml(monkeypatch):
    """ggml-python missing: no ggml column, a line in the legend, quantcore's rows remain."""
    monkeypatch.setattr(kquant, "ggml_module", lambda: None)
    monkeypatch.setattr(report, "installed", lambda p: p != "ggml")
    monkeypatch.setattr(kquant, "QuantizedLinear", _DequantLinear)
    out = io.StringIO()
    doc = run.bench(shapes=[(64, 256)], ops=["kquant", "kquantize"], quick=True, repeats=1,
                    stream=out)
    text = out.getvalue()
    heads = [line.split() for line in text.splitlines() if line.startswith("config")]
    assert all("ggml" not in h for h in heads) and len(heads) == 2
    flat = " ".join(text.split())
    assert "not measured: ggml (pip install cmake" in flat and "quantcore[bench]" not in flat
    assert {r["op"] for r in doc["results"]} == {"kquant", "kquantize"}
    for r in doc["results"]:
        assert r["ms"] > 0 and r["peers"]["ggml"]["ms"] is None
        assert r["peers"]["ggml"]["note"] == "not installed"
    assert doc["results"][0]["checks"]["weight_source"] == "quantcore.quantize"


def test_ggml_peer_multiplies_what_it_is_given():
    g = kquant.ggml_module()
    if g is None:
        pytest.skip("ggml-python is not installed (pip install cmake ninja scikit-build-core && "
                    "pip install --no-build-isolation ggml-python)")
    gguf = pytest.importorskip("gguf", reason="the gguf package is not installed")
    from quantcore.bench.peers import GgmlMatmul, GgmlThreads, ggml_quantize
    rng = np.random.default_rng(3)
    w = rng.standard_normal((48, 512), dtype=np.float32)
    x = rng.standard_normal((3, 512), dtype=np.float32)
    threads = GgmlThreads(g, 2)
    for fmt, tid in (("q4_k", 12), ("q6_k", 14)):
        blocks = ggml_quantize(g, fmt, w)
        ref = x @ gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType(tid)).T
        mm = GgmlMatmul(g, fmt, blocks, 3, 512, threads)
        got = mm(x).copy()
        assert got.shape == (3, 48)
        assert np.abs(got - ref).max() <= 0.02 * np.abs(ref).max()
        mm.close()
    threads.close()
    with pytest.raises(ValueError, match="multiple of 256"):
        ggml_quantize(g, "q4_k", w[:, :100])
