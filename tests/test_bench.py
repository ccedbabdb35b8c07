"""The bench package's parts without timing anything long: cache sizes read from
the machine (sysfs, then sysconf, then an assumption), the size classes and
layer copies they set, and the report (columns only for installed peers, a
legend, %bw above 100% never without its footnote, lines within 100 columns)."""

import io
import math

import pytest

from quantcore.bench import CASES, Result
from quantcore.bench import machine, report, run
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
