"""quantcore.metrics' output-level measures (cosine, relative error, KL divergence,
top-1 agreement) against their formulas written out here, and calibrated_error
against tr(dW H dW^T) / tr(W H W^T)."""
from __future__ import annotations

import math

import numpy as np
import pytest

import quantcore as qc
from quantcore import QuantConfig
from quantcore.calibrate import LayerStats
from quantcore.metrics import (OutputComparison, calibrated_error, compare_outputs, cosine_similarity,
                               kl_divergence, relative_error, top1_agreement)


def test_cosine_and_relative_error():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((2, 5, 16)).astype(np.float32)
    b = a + 0.1 * rng.standard_normal(a.shape).astype(np.float32)
    cos = cosine_similarity(a, b)
    assert cos.shape == (2, 5)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    want = (a64 * b64).sum(-1) / np.linalg.norm(a64, axis=-1) / np.linalg.norm(b64, axis=-1)
    np.testing.assert_allclose(cos, want, rtol=1e-12)
    assert relative_error(a, b) == pytest.approx(np.linalg.norm(b64 - a64) / np.linalg.norm(a64), rel=1e-12)
    assert relative_error(a, a) == 0.0
    z = np.zeros((2, 3))
    np.testing.assert_array_equal(cosine_similarity(z, z), [1.0, 1.0])
    np.testing.assert_array_equal(cosine_similarity(z, np.ones((2, 3))), [0.0, 0.0])
    assert relative_error(z, np.ones((2, 3))) == math.inf


def test_kl_divergence_and_top1():
    rng = np.random.default_rng(1)
    ref = rng.standard_normal((7, 50)) * 3
    out = ref + rng.standard_normal(ref.shape) * 0.3
    kl = kl_divergence(ref, out)
    p = np.exp(ref) / np.exp(ref).sum(1, keepdims=True)
    q = np.exp(out) / np.exp(out).sum(1, keepdims=True)
    np.testing.assert_allclose(kl, (p * np.log(p / q)).sum(1), rtol=1e-9)
    np.testing.assert_allclose(kl_divergence(ref, ref), 0.0, atol=1e-12)
    # large logits: no overflow
    assert np.all(np.isfinite(kl_divergence(ref * 1e3, out * 1e3)))
    assert top1_agreement(ref, out) == np.mean(ref.argmax(1) == out.argmax(1))
    assert top1_agreement(ref, ref) == 1.0


def test_compare_outputs():
    rng = np.random.default_rng(2)
    ref = rng.standard_normal((20, 32))
    out = ref + 0.05 * rng.standard_normal(ref.shape)
    c = compare_outputs(ref, out)
    assert isinstance(c, OutputComparison) and c.n_rows == 20 and c.kld_mean is None
    assert c.cosine_min <= c.cosine_mean < 1.0
    c2 = compare_outputs(ref, out, logits=True)
    kl = kl_divergence(ref, out)
    assert c2.kld_mean == pytest.approx(kl.mean()) and c2.kld_max == pytest.approx(kl.max())
    assert c2.kld_median == pytest.approx(np.median(kl)) and c2.top1_agreement == top1_agreement(ref, out)
    assert "KL divergence" in str(c2) and "same top token" in str(c2)
    assert c2.to_dict()["n_rows"] == 20


def test_output_measures_reject_bad_inputs():
    a = np.ones((3, 4))
    with pytest.raises(ValueError, match="shape"):
        cosine_similarity(a, np.ones((3, 5)))
    bad = a.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="output holds NaN"):
        compare_outputs(a, bad)
    with pytest.raises(TypeError, match="reference"):
        relative_error(np.ones((3, 4), np.int32), a)


def test_calibrated_error_is_the_output_error_ratio():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((12, 40)).astype(np.float32)
    x = (rng.standard_normal((200, 40)) @ rng.standard_normal((40, 40))).astype(np.float32)
    st = LayerStats(40).update(x)
    qt = qc.quantize(w, QuantConfig.int4())
    x64 = x.astype(np.float64)
    dw = qt.dequantize().astype(np.float64) - w
    want = np.linalg.norm(x64 @ dw.T) ** 2 / np.linalg.norm(x64 @ w.astype(np.float64).T) ** 2
    assert calibrated_error(w, qt, st) == pytest.approx(want, rel=1e-9)
    assert calibrated_error(w, qt.dequantize(), st) == pytest.approx(want, rel=1e-9)
    # the diagonal alone: the same ratio without the cross terms
    d = st.without_hessian()
    imp = (x64 ** 2).mean(0)
    assert calibrated_error(w, qt, d) == pytest.approx(
        ((dw ** 2) @ imp).sum() / ((w.astype(np.float64) ** 2) @ imp).sum(), rel=1e-9)
    assert calibrated_error(w, qc.quantize(w, QuantConfig.int8()), st) < calibrated_error(w, qt, st)
    with pytest.raises(ValueError, match="width 40 for a weight with 20"):
        calibrated_error(w[:, :20], qt.dequantize()[:, :20], st)
    # metrics field: validated, and shown in the repr
    m = qc.CompressionMetrics(10, 32, 4, 0, 0.1, calibrated_error=0.01)
    assert "calibrated_error=0.01" in repr(m)
    with pytest.raises(ValueError, match="calibrated_error"):
        qc.CompressionMetrics(10, 32, 4, 0, 0.1, calibrated_error=-1.0)
