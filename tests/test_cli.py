"""The command line: `quantcore info`, `quantcore bench`, and its errors (run as
`python -m quantcore` in a subprocess, as a user would)."""

import json
import os
import subprocess
import sys

import pytest

TINY = ["--quick", "--repeats", "1", "--shapes", "64x256"]


def qc(*args, timeout=120):
    env = dict(os.environ)
    env.pop("QUANTCORE_ISA", None)
    return subprocess.run([sys.executable, "-m", "quantcore", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def assert_one_line_error(p, *words):
    assert p.returncode != 0
    assert p.stdout == ""
    err = p.stderr.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    for w in words:
        assert w in err, err


def test_info():
    p = qc("info")
    assert p.returncode == 0, p.stderr
    import quantcore
    assert quantcore.__version__ in p.stdout
    assert "isa" in p.stdout and "openmp" in p.stdout


def test_info_json():
    p = qc("info", "--json")
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    import quantcore
    assert d["version"] == quantcore.__version__
    assert d["isa"] in d["isa_available"]
    assert set(d) == set(quantcore.info())


def test_version_and_help():
    p = qc("--version")
    assert p.returncode == 0 and p.stdout.startswith("quantcore ")
    p = qc("bench", "--help")
    assert p.returncode == 0 and "--shapes" in p.stdout
    from quantcore import benchmark
    # the help lists the configs and ops that quantcore.benchmark knows
    for name in list(benchmark.CONFIGS) + list(benchmark.CASES):
        assert name in p.stdout, name
    p = qc()
    assert p.returncode != 0 and "info" in p.stderr and "bench" in p.stderr


def test_bench_tiny():
    p = qc("bench", *TINY, "--no-targets")
    assert p.returncode == 0, p.stderr
    out = p.stdout
    for word in ("quantize", "dequantize", "int8", "int4_g32", "q8_0", "q4_0", "q4_1",
                 "64x256", "GB/s", "numpy ms", "speedup"):
        assert word in out, word
    assert "targets" not in out
    assert "Traceback" not in p.stderr


def test_bench_json(tmp_path):
    path = tmp_path / "bench.json"
    p = qc("bench", *TINY, "--configs", "int8,q4_0", "--json", str(path))
    assert p.returncode == 0, p.stderr
    assert str(path) in p.stdout
    d = json.loads(path.read_text())
    import quantcore
    assert d["quantcore"]["version"] == quantcore.__version__
    assert d["date"][:2] == "20"
    assert d["settings"]["shapes"] == [[64, 256]]
    rows = [r for r in d["results"] if r["op"] != "linear"]
    assert {(r["op"], r["config"]) for r in rows} == {
        (op, c) for op in ("quantize", "dequantize") for c in ("int8", "q4_0")}
    lin = [r for r in d["results"] if r["op"] == "linear"]
    # --shapes 64x256 is (N, K) for the linear layers; --quick runs M in {1, 32}
    assert {tuple(r["shape"]) for r in lin} == {(1, 256, 64), (32, 256, 64)}
    for r in lin:
        assert r["gflops"] > 0 and r["peers"]["numpy"]["ms"] > 0
        assert r["checks"]["kernel"].startswith(("gemv_", "gemm_"))
        assert r["checks"].get("max_rel_err_vs_float32", 0.0) < 0.05
    for r in rows:
        assert r["shape"] == [64, 256] and r["ms"] > 0 and r["gbps"] > 0
        assert r["peers"]["numpy"]["ms"] > 0 and r["peers"]["numpy"]["speedup"] > 0
    # the single-thread targets section is there, with its figures
    assert "targets" in p.stdout
    assert [t["config"] for t in d["targets"]] == ["int8", "int4_g32", "q8_0"]
    for t in d["targets"]:
        assert t["threads"] == 1 and t["gbps"] > 0 and isinstance(t["gbps_pass"], bool)
    try:
        import gguf  # noqa: F401
    except ImportError:
        assert "gguf not installed" in p.stdout
    else:
        deq = [r for r in rows if r["op"] == "dequantize" and r["config"] == "q4_0"][0]
        assert deq["peers"]["gguf"]["ms"] > 0
        assert deq["checks"]["gguf_bit_exact"] is True


@pytest.mark.parametrize("args, words", [
    (["bench", "--bogus"], ["--bogus"]),
    (["bench", "--repeats", "0"], ["--repeats"]),
    (["bench", "--shapes", "64xx"], ["--shapes", "64xx"]),
    (["bench", "--configs", "int3"], ["int3", "int8"]),
    (["bench", "--ops", "matmul9"], ["matmul9"]),
    (["frobnicate"], ["frobnicate"]),
    (["bench", *TINY, "--json", "/nonexistent-dir/x.json"], ["--json", "nonexistent-dir"]),
])
def test_errors_are_one_line(args, words):
    assert_one_line_error(qc(*args), *words)


def test_plot_without_matplotlib_or_with(tmp_path):
    path = tmp_path / "speedups.png"
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        p = qc("bench", *TINY, "--plot", str(path))
        assert_one_line_error(p, "matplotlib")
        assert not path.exists()
    else:
        p = qc("bench", *TINY, "--no-targets", "--configs", "q8_0", "--plot", str(path))
        assert p.returncode == 0, p.stderr
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_main_in_process(capsys):
    from quantcore.cli import main
    assert main(["info", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["version"]
    assert main(["bench", "--threads", "x"]) == 2
    err = capsys.readouterr().err
    assert "--threads" in err and len(err.strip().splitlines()) == 1
