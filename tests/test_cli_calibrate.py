"""`quantcore quantize --method gptq --calibration STATS` and `--imatrix FILE`: the
file holds what quantize_model gives, the table marks the calibrated layers,
and mistakes are one-line errors."""
from __future__ import annotations

import numpy as np
import pytest

import quantcore
from quantcore import QuantConfig
from quantcore import calibrate as C
from quantcore.calibrate import StatsCollector, save_stats, write_imatrix
from test_cli import _model_file, assert_one_line_error, qc


def _stats(tmp_path, arrays, names=("layer.0.q", "layer.0.up.weight", "lm_head")):
    rng = np.random.default_rng(3)
    col = StatsCollector()
    for n in names:
        k = arrays[n if n.endswith(".weight") else n + ".weight"].shape[1]
        col.observe(n, rng.standard_normal((200, k)).astype(np.float32))
    path = tmp_path / "stats.safetensors"
    save_stats(path, col)
    return path, dict(col)


def test_quantize_gptq_with_calibration(tmp_path):
    src, arrays = _model_file(tmp_path)
    spath, stats = _stats(tmp_path, arrays)
    out = tmp_path / "out.safetensors"
    p = qc("quantize", str(src), "-o", str(out), "--method", "gptq", "--calibration", str(spath),
           "--act-order", "--exclude", "embed*", "--no-progress")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].split()[-3:] == ["calibrated:", "out", "err"]
    row = {l.split()[0]: l.split() for l in lines[2:] if l and not l.startswith("-")}
    assert row["layer.0.q.weight"][2:6] == ["int4", "g32", "gptq", "act-order"]
    assert float(row["layer.0.q.weight"][-1]) > 0
    assert row["embed.weight"][-1] == "-"
    assert "calibrated: 3 of 3 quantized tensors" in p.stdout
    m = quantcore.load(out)
    cfg = QuantConfig.int4(method="gptq", act_order=True)
    assert m["layer.0.q.weight"] == quantcore.quantize(arrays["layer.0.q.weight"], cfg,
                                                       calibration=stats["layer.0.q"])
    assert m.metrics["layer.0.q.weight"].calibrated_error == pytest.approx(
        float(row["layer.0.q.weight"][-1]), rel=1e-3)


def test_quantize_mse_with_an_imatrix(tmp_path):
    pytest.importorskip("gguf", reason="the gguf package is not installed")
    src, arrays = _model_file(tmp_path)
    _, stats = _stats(tmp_path, arrays, names=("layer.0.q.weight",))
    ipath = tmp_path / "imatrix.gguf"
    write_imatrix(ipath, stats)
    out = tmp_path / "o.safetensors"
    p = qc("quantize", str(src), "-o", str(out), "--format", "q4_0", "--method", "mse",
           "--imatrix", str(ipath), "--no-progress")
    assert p.returncode == 0, p.stderr
    row = {l.split()[0]: l.split() for l in p.stdout.splitlines()[2:] if l and not l.startswith("-")}
    assert row["layer.0.up.weight"][-1] == "no" and row["layer.0.q.weight"][-1] != "no"
    assert "calibrated: 1 of 4 quantized tensors" in p.stdout
    imp = C.read_imatrix(ipath)["layer.0.q.weight"]
    assert quantcore.load(out)["layer.0.q.weight"] == quantcore.quantize(
        arrays["layer.0.q.weight"], QuantConfig.q4_0(method="mse"), calibration=imp)


def test_calibration_mistakes_are_one_line(tmp_path):
    src, arrays = _model_file(tmp_path)
    spath, _ = _stats(tmp_path, arrays, names=("layer.0.q",))
    o = str(tmp_path / "o.safetensors")
    for args, words in [
        (["--method", "gptq"], ["--method gptq needs --calibration"]),
        (["--method", "gptq", "--imatrix", str(spath)], ["diagonal"]),
        (["--calibration", str(spath)], ["--calibration", "absmax"]),
        (["--method", "mse", "--act-order"], ["--act-order needs --method gptq"]),
        (["--method", "gptq", "--calibration", str(spath), "--imatrix", str(spath)], ["--imatrix"]),
        (["--method", "gptq", "--calibration", str(tmp_path / "none.safetensors")], ["no such file"]),
        # the statistics cover one layer; gptq needs them for every quantized tensor
        (["--method", "gptq", "--calibration", str(spath)], ["embed.weight", "no entry"]),
        (["--method", "gptq", "--calibration", str(src)], ["not a calibration file"]),
    ]:
        assert_one_line_error(qc("quantize", str(src), "-o", o, "--no-progress", *args), *words)
