"""quantcore.calibrate: LayerStats against NumPy's X.T @ X, merging, weights, the
collector, files (quantcore's safetensors layout and llama.cpp's imatrix
layouts, including files written byte by byte here), method="mse" with an
importance vector, quantize_model with calibration, and bad inputs."""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest

import quantcore as qc
from quantcore import QuantConfig
from quantcore import _layerstats as LS
from quantcore import calibrate as C
from quantcore.calibrate import LayerStats, StatsCollector, load_stats, read_imatrix, save_stats, write_imatrix


def _x(seed, rows, k, dtype=np.float32):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, k)) * rng.uniform(0.1, 3, k)
    return x.astype(dtype)


# ---- LayerStats --------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_update_is_x_transpose_x_in_float64(dtype):
    x = _x(0, 50, 24, dtype)
    st = LayerStats(24).update(x.reshape(5, 10, 24))
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(st.xtx, x64.T @ x64, rtol=1e-12)
    np.testing.assert_allclose(st.sum_sq, (x64 ** 2).sum(0), rtol=1e-12)
    np.testing.assert_allclose(st.hessian, x64.T @ x64 / 50, rtol=1e-12)
    np.testing.assert_allclose(st.importance, (x64 ** 2).mean(0), rtol=1e-12)
    assert st.count == 50 and st.in_features == 24 and st.has_hessian
    assert st.xtx.flags.writeable is False and st.sum_sq.flags.writeable is False


def test_merge_equals_one_pass_over_the_concatenated_batches(monkeypatch):
    # a small block so that the lower-triangle accumulation and mirroring run
    monkeypatch.setattr(LS, "_SYRK_BLOCK", 16)
    batches = [_x(i, r, 70) for i, r in enumerate((1, 13, 40, 7))]
    one = LayerStats(70).update(np.concatenate(batches))
    a = LayerStats(70)
    for b in batches[:2]:
        a.update(b)
    b = LayerStats(70)
    for bb in batches[2:]:
        b.update(bb)
    m = a.merge(b)
    assert m.count == one.count == 61
    tol = dict(rtol=1e-12, atol=1e-12 * np.abs(one.xtx).max())  # float64 sums in another order
    np.testing.assert_allclose(m.xtx, one.xtx, **tol)
    np.testing.assert_allclose(m.sum_sq, one.sum_sq, rtol=1e-12)
    np.testing.assert_allclose(np.diag(m.xtx), m.sum_sq, rtol=1e-12)
    np.testing.assert_array_equal(m.xtx, m.xtx.T)
    full = np.concatenate(batches).astype(np.float64)
    np.testing.assert_allclose(one.xtx, full.T @ full, **tol)
    # diagonal-only on either side: the merge keeps the diagonal only
    d = a.merge(b.without_hessian())
    assert not d.has_hessian and d.xtx is None and d.hessian is None
    np.testing.assert_allclose(d.sum_sq, one.sum_sq, rtol=1e-12)
    assert a.count == 14  # merge made a new object


def test_weights_rows_and_masks():
    x = _x(1, 12, 8)
    w = np.linspace(0, 2, 12)
    st = LayerStats(8).update(x, w)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(st.xtx, (x64 * w[:, None]).T @ x64, rtol=1e-12)
    assert st.count == 12
    col = StatsCollector()
    mask = np.array([[1, 1, 0], [1, 0, 0]])
    xs = x[:6].reshape(2, 3, 8)
    col.observe("a", xs, mask=mask, weights=np.full((2, 3), 2.0))
    keep = xs[mask > 0].astype(np.float64)
    np.testing.assert_allclose(col["a"].xtx, 2 * keep.T @ keep, rtol=1e-12)
    assert col["a"].count == 3 and len(col) == 1 and list(col) == ["a"]


def test_torch_tensors_are_accepted():
    torch = pytest.importorskip("torch", reason="torch is not installed")
    x = _x(2, 9, 5)
    st = LayerStats(5).update(torch.from_numpy(x).to(torch.bfloat16))
    xb = torch.from_numpy(x).to(torch.bfloat16).float().numpy().astype(np.float64)
    np.testing.assert_allclose(st.xtx, xb.T @ xb, rtol=1e-12)


def test_bad_updates_leave_the_statistics_unchanged():
    st = LayerStats(6).update(_x(3, 4, 6))
    before = st.copy()
    bad = _x(4, 5, 6)
    bad[3, 2] = np.inf
    with pytest.raises(ValueError, match=r"NaN or Inf \(row 3, column 2\)"):
        st.update(bad)
    with pytest.raises(ValueError, match=r"\(\.\.\., 6\)"):
        st.update(_x(5, 4, 7))
    with pytest.raises(TypeError, match="float16, float32 or float64"):
        st.update(np.ones((2, 6), np.int32))
    with pytest.raises(ValueError, match="weights must have shape"):
        st.update(_x(5, 4, 6), np.ones(3))
    with pytest.raises(ValueError, match="weights must be finite"):
        st.update(_x(5, 4, 6), -np.ones(4))
    assert st == before
    with pytest.raises(ValueError, match="merge"):
        st.merge(LayerStats(7))
    with pytest.raises(ValueError, match="in_features"):
        LayerStats(0)
    col = StatsCollector()
    col.observe("a", _x(6, 3, 4))
    with pytest.raises(ValueError, match="width 5"):
        col.observe("a", _x(6, 3, 5))


def test_from_arrays_checks_values():
    x = _x(7, 10, 4).astype(np.float64)
    st = LayerStats.from_arrays((x ** 2).sum(0), 10, x.T @ x)
    assert st == LayerStats(4).update(x)
    with pytest.raises(ValueError, match="negative"):
        LayerStats.from_arrays(-np.ones(4), 3)
    with pytest.raises(ValueError, match="NaN"):
        LayerStats.from_arrays(np.array([1, np.nan, 1, 1.0]), 3)
    with pytest.raises(ValueError, match="symmetric"):
        LayerStats.from_arrays(np.ones(2), 3, np.array([[1.0, 2.0], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="count is 0"):
        LayerStats.from_arrays(np.ones(2), 0)
    imp = LayerStats.from_importance([1.0, 4.0], count=5)
    np.testing.assert_allclose(imp.importance, [1.0, 4.0])
    assert imp.count == 5 and not imp.has_hessian


def test_collector_wraps_callables():
    col = StatsCollector(hessian=False)
    lin = qc.QuantizedLinear.from_linear(_x(8, 4, 16), None, QuantConfig.int8())
    layer = col.wrap("fc", lin)
    x = _x(9, 3, 16)
    np.testing.assert_array_equal(layer(x), lin(x))
    assert layer.in_features == 16  # the layer's attributes show through
    assert not col["fc"].has_hessian and col["fc"].count == 3
    np.testing.assert_allclose(col["fc"].importance, (x.astype(np.float64) ** 2).mean(0))


# ---- files -------------------------------------------------------------------------------------------

def test_save_and_load_stats(tmp_path):
    stats = {"a.b": LayerStats(8).update(_x(10, 20, 8)),
             "c": LayerStats(3, hessian=False).update(_x(11, 5, 3))}
    p = tmp_path / "s.safetensors"
    save_stats(p, stats, metadata={"note": "x"})
    back = load_stats(p)
    assert list(back) == ["a.b", "c"]
    for k in stats:
        assert back[k] == stats[k]
    from safetensors.numpy import load_file  # any safetensors reader opens it
    assert set(load_file(str(p))) == {"a.b.sum_sq", "a.b.count", "a.b.xtx", "c.sum_sq", "c.count"}


def test_load_stats_rejects_bad_files(tmp_path):
    from safetensors.numpy import save_file
    p = tmp_path / "bad.safetensors"
    save_file({"w": np.ones(3, np.float32)}, str(p))
    with pytest.raises(ValueError, match="not a calibration file"):
        load_stats(p)
    meta = {"quantcore.calibration": json.dumps({"version": 1, "layers": ["a"]})}
    save_file({"a.sum_sq": np.ones(3)}, str(p), metadata=meta)
    with pytest.raises(ValueError, match="no tensor a.count"):
        load_stats(p)
    save_file({"a.sum_sq": np.ones(3, np.float32), "a.count": np.array([2])}, str(p), metadata=meta)
    with pytest.raises(ValueError, match="must be F64"):
        load_stats(p)
    save_file({"a.sum_sq": np.array([1.0, np.nan, 1.0]), "a.count": np.array([2])}, str(p), metadata=meta)
    with pytest.raises(ValueError, match="layer 'a'.*NaN"):
        load_stats(p)
    save_file({"a.sum_sq": np.ones(3), "a.count": np.array([2]), "b.sum_sq": np.ones(3)}, str(p),
              metadata=meta)
    with pytest.raises(ValueError, match="belong to no listed layer"):
        load_stats(p)
    p.write_bytes(b"\x10\x00")
    with pytest.raises(ValueError):
        load_stats(p)


def test_imatrix_gguf_round_trip(tmp_path):
    pytest.importorskip("gguf", reason="the gguf package is not installed")
    stats = {"blk.0.attn_q.weight": LayerStats(32).update(_x(12, 600, 32)),
             "blk.0.ffn_down.weight": LayerStats(64, hessian=False).update(_x(13, 700, 64))}
    p = tmp_path / "imatrix.gguf"
    write_imatrix(p, stats, dataset="calib.txt")
    back = read_imatrix(p)
    assert set(back) == set(stats)
    for k, st in stats.items():
        assert back[k].count == st.count and not back[k].has_hessian
        np.testing.assert_allclose(back[k].importance, st.importance, rtol=1e-6)
    meta = qc.gguf.load_metadata(p)
    assert meta["general.type"] == "imatrix" and meta["imatrix.chunk_size"] == 512
    assert meta["imatrix.datasets"] == ["calib.txt"]
    raw = qc.gguf.load(p)  # the documented tensors, shapes (matrices, columns) and (matrices, 1)
    assert raw["blk.0.attn_q.weight.in_sum2"].shape == (1, 32)
    assert raw["blk.0.attn_q.weight.counts"].shape == (1, 1)
    assert raw["blk.0.attn_q.weight.counts"][0, 0] == 600


def test_imatrix_gguf_experts_and_errors(tmp_path):
    pytest.importorskip("gguf", reason="the gguf package is not installed")
    sums = np.abs(_x(14, 3, 16)).astype(np.float32)  # 3 experts
    counts = np.array([[10.0], [0.0], [30.0]], np.float32)
    p = tmp_path / "moe.gguf"
    qc.gguf.save(p, {"blk.0.ffn_down_exps.weight.in_sum2": sums,
                     "blk.0.ffn_down_exps.weight.counts": counts,
                     "blk.0.ffn_down_exps.weight.in_sum": sums}, metadata={"general.type": "imatrix"})
    st = read_imatrix(p)["blk.0.ffn_down_exps.weight"]
    assert st.count == 40
    np.testing.assert_allclose(st.sum_sq, sums.astype(np.float64).sum(0), rtol=1e-6)
    qc.gguf.save(p, {"a.in_sum2": sums[:1]}, metadata={"general.type": "imatrix"})
    with pytest.raises(ValueError, match="has no a.counts"):
        read_imatrix(p)
    qc.gguf.save(p, {"a.in_sum2": sums[:2], "a.counts": counts}, metadata={"general.type": "imatrix"})
    with pytest.raises(ValueError, match="3 counts for 2 matrices"):
        read_imatrix(p)
    qc.gguf.save(p, {"w": sums}, metadata={"general.type": "model"})
    with pytest.raises(ValueError, match="not an imatrix"):
        read_imatrix(p)


def _dat_bytes(entries, last_chunk=3, dataset=b"data.txt"):
    """A legacy imatrix file, byte by byte as llama-imatrix writes it."""
    out = [struct.pack("<i", len(entries))]
    for name, ncall, values in entries:
        b = name.encode()
        out.append(struct.pack("<i", len(b)) + b + struct.pack("<ii", ncall, len(values)))
        out.append(np.asarray(values, "<f4").tobytes())
    out.append(struct.pack("<i", last_chunk))
    out.append(struct.pack("<i", len(dataset)) + dataset)
    return b"".join(out)


def test_imatrix_dat_files(tmp_path):
    p = tmp_path / "imatrix.dat"
    means = np.array([0.5, 2.0, 0.0, 8.0])
    p.write_bytes(_dat_bytes([("blk.0.attn_k.weight", 4, means * 4), ("output.weight", 2, [1.0, 1.0])]))
    st = read_imatrix(p)
    np.testing.assert_allclose(st["blk.0.attn_k.weight"].importance, means, rtol=1e-7)
    assert st["blk.0.attn_k.weight"].count == 4 * 512
    assert read_imatrix(p, chunk_size=100)["output.weight"].count == 200
    # our writer gives the same layout back
    stats = {"x.weight": LayerStats(5).update(_x(15, 1000, 5))}
    write_imatrix(tmp_path / "w.dat", stats, format="dat")
    back = read_imatrix(tmp_path / "w.dat")["x.weight"]
    np.testing.assert_allclose(back.importance, stats["x.weight"].importance, rtol=1e-6)
    assert back.count == 2 * 512  # ncall = ceil(1000 / 512)
    # truncated and corrupt files
    good = _dat_bytes([("a", 1, [1.0, 2.0])])
    for cut in (2, 10, len(good) - 17):  # (the trailer after the entries is optional)
        p.write_bytes(good[:cut])
        with pytest.raises(ValueError):
            read_imatrix(p)
    p.write_bytes(_dat_bytes([("a", 0, [1.0, 2.0])]))
    with pytest.raises(ValueError, match="ncall is 0"):
        read_imatrix(p)
    p.write_bytes(_dat_bytes([("a", 1, [1.0, np.nan])]))
    with pytest.raises(ValueError, match="finite"):
        read_imatrix(p)
    p.write_bytes(_dat_bytes([("a", 1, [1.0]), ("a", 1, [1.0])]))
    with pytest.raises(ValueError, match="twice"):
        read_imatrix(p)
    with pytest.raises(ValueError, match="format"):
        write_imatrix(tmp_path / "z", stats, format="txt")
    with pytest.raises(ValueError, match="count 0"):
        write_imatrix(tmp_path / "z", {"a": LayerStats(3)})


# ---- method="mse" with importance --------------------------------------------------------------------

@pytest.mark.parametrize("cfg", [QuantConfig.int4(), QuantConfig.q4_0(), QuantConfig.q4_1(),
                                 QuantConfig.int8(), QuantConfig.int4(symmetric=False)],
                         ids=["int4", "q4_0", "q4_1", "int8", "int4_asym"])
def test_mse_with_importance_lowers_the_weighted_error(cfg):
    rng = np.random.default_rng(16)
    w = rng.standard_normal((64, 128)).astype(np.float32)
    x = _x(17, 400, 128)
    x[:, :4] *= 30  # loud channels
    st = LayerStats(128, hessian=False).update(x)
    plain = qc.quantize(w, cfg.replace(method="mse"))
    imp = qc.quantize(w, cfg.replace(method="mse"), calibration=st)
    assert imp.config == plain.config and imp.data.shape == plain.data.shape
    weighted = lambda t: float((((t.dequantize() - w) ** 2) @ st.importance).sum())  # noqa: E731
    assert weighted(imp) < weighted(plain)
    # the statistics' diagonal is what counts: the full matrix changes nothing
    assert imp == qc.quantize(w, cfg.replace(method="mse"), calibration=LayerStats(128).update(x))


def test_mse_calibration_errors():
    w = _x(18, 4, 32)
    st = LayerStats(32).update(_x(19, 10, 32))
    with pytest.raises(ValueError, match="width 32 for a weight with 16"):
        qc.quantize(w[:, :16], QuantConfig.int4(method="mse"), calibration=st)
    with pytest.raises(ValueError, match="no rows"):
        qc.quantize(w, QuantConfig.int4(method="mse"), calibration=LayerStats(32))
    with pytest.raises(TypeError, match="LayerStats"):
        qc.quantize(w, QuantConfig.int4(method="mse"), calibration=np.ones(32))


# ---- whole models -------------------------------------------------------------------------------------------

def _model():
    rng = np.random.default_rng(20)
    weights = {"l1.weight": rng.standard_normal((16, 32)).astype(np.float32),
               "l1.bias": np.zeros(16, np.float32),
               "l2.weight": rng.standard_normal((8, 16)).astype(np.float32)}
    col = StatsCollector()
    col.observe("l1", _x(21, 100, 32))
    col.observe("l2.weight", _x(22, 100, 16))
    return weights, dict(col)


def test_quantize_model_with_calibration():
    weights, stats = _model()
    m = qc.quantize_model(weights, QuantConfig.int4(method="gptq"), calibration=stats, progress=False)
    for name in ("l1.weight", "l2.weight"):
        want = qc.quantize(weights[name], QuantConfig.int4(method="gptq"),
                           calibration=C.lookup(stats, name))
        assert m[name] == want
        ce = m.metrics[name].calibrated_error
        assert ce is not None and ce == pytest.approx(
            qc.metrics.calibrated_error(weights[name], want, C.lookup(stats, name)))
    assert m.metrics["l1.bias"].calibrated_error is None
    assert "calib err" in str(m.metrics) and "calib err" in m.metrics.to_markdown()
    # plain quantization has no such column
    assert "calib err" not in str(qc.quantize_model(weights, progress=False).metrics)
    # method="mse" uses what it finds and quantizes the rest plainly
    m2 = qc.quantize_model(weights, QuantConfig.int4(method="mse"), calibration={"l1": stats["l1"]},
                           progress=False)
    assert m2.metrics["l1.weight"].calibrated_error is not None
    assert m2.metrics["l2.weight"].calibrated_error is None
    assert m2["l2.weight"] == qc.quantize(weights["l2.weight"], QuantConfig.int4(method="mse"))


def test_quantize_model_calibration_errors():
    weights, stats = _model()
    gptq = QuantConfig.int4(method="gptq")
    with pytest.raises(ValueError, match=r"weights\['l2.weight'\].*no entry 'l2.weight' or 'l2'"):
        qc.quantize_model(weights, gptq, calibration={"l1": stats["l1"]}, progress=False)
    with pytest.raises(ValueError, match=r"weights\['l1.weight'\].*calibration=None"):
        qc.quantize_model(weights, gptq, progress=False)
    with pytest.raises(ValueError, match=r"weights\['l2.weight'\].*width 32 for a weight with 16"):
        qc.quantize_model(weights, gptq, calibration={"l1": stats["l1"], "l2": stats["l1"]},
                          progress=False)
    with pytest.raises(ValueError, match="matches no weight"):
        qc.quantize_model(weights, gptq, calibration={"other": stats["l1"]}, progress=False)
    with pytest.raises(ValueError, match="absmax"):
        qc.quantize_model(weights, QuantConfig.int4(), calibration=stats, progress=False)
    with pytest.raises(TypeError, match="LayerStats"):
        qc.quantize_model(weights, gptq, calibration={"l1": np.ones(3)}, progress=False)
    # excluded or overridden layers need no statistics
    m = qc.quantize_model(weights, gptq, calibration={"l1": stats["l1"]},
                          overrides={"l2*": QuantConfig.int8()}, progress=False)
    assert m["l2.weight"].config == QuantConfig.int8()


def test_importance_and_calibration_are_the_same_weights():
    """The statistics' mean squares are the importance: for the mse search and for
    the K-quants' imatrix path alike."""
    rng = np.random.default_rng(23)
    w = rng.standard_normal((8, 256)).astype(np.float32)
    st = LayerStats(256, hessian=False).update(_x(24, 300, 256))
    imp = st.importance.astype(np.float32)
    for cfg in (QuantConfig.q4_0(method="mse"), QuantConfig.int8(method="mse"), QuantConfig.q4_k(),
                QuantConfig.q6_k()):
        assert qc.quantize(w, cfg, calibration=st) == qc.quantize(w, cfg, importance=imp)
    assert qc.quantize(w, QuantConfig.q4_k(), calibration=st) != qc.quantize(w, QuantConfig.q4_k())
    with pytest.raises(ValueError, match="not both"):
        qc.quantize(w, QuantConfig.q4_0(method="mse"), calibration=st, importance=imp)
    with pytest.raises(ValueError, match="calibration="):
        qc.quantize(w, QuantConfig.int4(method="gptq"), importance=imp)
    with pytest.raises(ValueError, match="importance is used by the K-quant formats"):
        qc.quantize(w, QuantConfig.q4_0(), importance=imp)
    # quantize_model hands the K-quants their statistics too
    m = qc.quantize_model({"a.weight": w}, QuantConfig.q4_k(), calibration={"a": st}, progress=False)
    assert m["a.weight"] == qc.quantize(w, QuantConfig.q4_k(), calibration=st)
    assert m.metrics["a.weight"].calibrated_error is not None


def test_imatrix_paths(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_imatrix(tmp_path / "missing.dat")
    with pytest.raises(ValueError, match="directory"):
        read_imatrix(tmp_path)
    with pytest.raises(ValueError, match="directory"):
        write_imatrix(tmp_path, {"a": LayerStats(2).update(np.ones((1, 2)))}, format="dat")
