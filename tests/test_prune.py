"""prune_magnitude against a NumPy oracle (a stable sort of |x|): counts, masks,
ties, per-row pruning, dtypes, inputs never modified, bad input."""

import math

import numpy as np
import pytest

import quantcore as qc
from helpers import AWKWARD_SHAPES, shape_id
from quantcore import prune_magnitude


def oracle(a, sparsity, per_row=False):
    """Prune round-half-up(n * sparsity) smallest |x| per tensor (or per row), ties
    broken by position (earlier first), via a stable argsort."""
    rows = a.reshape(-1, a.shape[-1]) if per_row else a.reshape(1, -1)
    n = rows.shape[1]
    k = min(n, math.floor(n * sparsity + 0.5 + 1e-9))
    keep = np.ones(rows.shape, bool)
    order = np.argsort(np.abs(rows.astype(np.float64)), axis=1, kind="stable")[:, :k]
    np.put_along_axis(keep, order, False, axis=1)
    keep = keep.reshape(a.shape)
    return np.where(keep, a, 0).astype(a.dtype), keep


@pytest.mark.parametrize("shape", AWKWARD_SHAPES[::3] + [(2, 3, 17), (64,)], ids=shape_id)
@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.25, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("per_row", [False, True], ids=["tensor", "row"])
def test_against_oracle(rng, shape, sparsity, per_row):
    a = rng.standard_normal(shape).astype(np.float32)
    before = a.copy()
    p, mask = prune_magnitude(a, sparsity, per_row=per_row)
    op, omask = oracle(a, sparsity, per_row)
    assert np.array_equal(a, before)  # never modified
    assert mask.dtype == bool and mask.shape == a.shape
    assert np.array_equal(mask, omask)
    assert p.dtype == a.dtype and np.array_equal(p, op)
    assert np.array_equal(p[mask], a[mask]) and np.all(p[~mask] == 0)


def test_exact_counts():
    a = np.arange(1, 11, dtype=np.float32)  # |x| all distinct
    for s, k in [(0.0, 0), (0.1, 1), (0.15, 2), (0.25, 3), (0.3, 3), (0.5, 5), (0.7, 7),
                 (0.94, 9), (0.95, 10), (1.0, 10)]:
        p, mask = prune_magnitude(a, s)
        assert np.count_nonzero(~mask) == k, (s, k)
        assert np.array_equal(mask, a > k)  # the smallest go first
    # binary fractions that land just below an integer still round as written
    b = np.arange(1, 101, dtype=np.float64)
    assert np.count_nonzero(~prune_magnitude(b, 0.29)[1]) == 29
    assert np.count_nonzero(~prune_magnitude(b, 0.57)[1]) == 57
    # round half up: 3 * 0.5 = 1.5 -> 2
    assert np.count_nonzero(~prune_magnitude(np.ones(3), 0.5)[1]) == 2


def test_ties_deterministic_in_c_order():
    a = np.array([2.0, -1.0, 1.0, 3.0, -1.0, 1.0], np.float32)
    p, mask = prune_magnitude(a, 0.5)  # prune 3 of the four |x| == 1: the first three
    assert mask.tolist() == [True, False, False, True, False, True]
    assert p.tolist() == [2.0, 0.0, 0.0, 3.0, 0.0, 1.0]
    z = np.array([0.0, -0.0, 0.0, 5.0], np.float32)
    assert prune_magnitude(z, 0.5)[1].tolist() == [False, False, True, True]
    # all equal: the first k in C order go, also along rows
    m = prune_magnitude(np.ones((2, 4), np.float32), 0.5, per_row=True)[1]
    assert m.tolist() == [[False, False, True, True]] * 2
    assert prune_magnitude(np.ones((2, 4), np.float32), 0.25)[1].tolist() == \
        [[False, False, True, True], [True, True, True, True]]


def test_many_ties_against_oracle(rng):
    a = rng.integers(-3, 4, size=(9, 37)).astype(np.float32)
    for s in (0.1, 0.33, 0.5, 0.77):
        for per_row in (False, True):
            assert np.array_equal(prune_magnitude(a, s, per_row)[1], oracle(a, s, per_row)[1])


def test_per_row_counts_each_row(rng):
    a = rng.standard_normal((5, 3, 20)).astype(np.float32)
    a[0] *= 100  # a global prune would spare this slice; per row does not
    p, mask = prune_magnitude(a, 0.4, per_row=True)
    assert np.all((~mask).sum(axis=-1) == 8)
    pg, maskg = prune_magnitude(a, 0.4)
    assert (~maskg).sum() == round(0.4 * a.size)
    assert (~maskg[0]).sum() < (~mask[0]).sum()


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.int8, np.int32, np.int64])
def test_dtypes(rng, dtype):
    a = (rng.standard_normal((4, 33)) * 50).astype(dtype)
    p, mask = prune_magnitude(a, 0.3)
    assert p.dtype == a.dtype
    assert np.array_equal(mask, oracle(a, 0.3)[1])


def test_strided_and_inf(rng):
    base = rng.standard_normal((8, 40)).astype(np.float32)
    view = base[::2, 1::3]
    before = base.copy()
    p, mask = prune_magnitude(view, 0.5)
    assert np.array_equal(mask, oracle(np.ascontiguousarray(view), 0.5)[1])
    assert np.array_equal(base, before)
    a = np.array([np.inf, 1.0, -np.inf, 0.5], np.float32)
    assert prune_magnitude(a, 0.5)[1].tolist() == [True, False, True, False]


def test_torch_and_lists():
    assert prune_magnitude([1.0, -3.0, 2.0], 1 / 3)[1].tolist() == [False, True, True]
    torch = pytest.importorskip("torch")
    t = torch.tensor([[1.0, -3.0], [0.5, 2.0]])
    p, mask = prune_magnitude(t, 0.5)
    assert isinstance(p, np.ndarray) and mask.tolist() == [[False, True], [False, True]]


def test_empty_raises():
    # empty arrays are bad input, as for quantize
    with pytest.raises(ValueError, match="array is empty"):
        prune_magnitude(np.zeros((0, 4), np.float32), 0.5)


@pytest.mark.parametrize("sparsity", [-0.1, 1.5, float("nan"), float("inf")])
def test_bad_sparsity(sparsity):
    with pytest.raises(ValueError, match="sparsity"):
        prune_magnitude(np.ones(4, np.float32), sparsity)


def test_bad_inputs():
    with pytest.raises(TypeError, match="sparsity"):
        prune_magnitude(np.ones(4), "half")
    with pytest.raises(TypeError, match="sparsity"):
        prune_magnitude(np.ones(4), True)
    with pytest.raises(ValueError, match="ndim"):
        prune_magnitude(np.float32(3.0), 0.5)
    with pytest.raises(ValueError, match="NaN"):
        prune_magnitude(np.array([1.0, np.nan]), 0.5)
    with pytest.raises(TypeError, match="dtype"):
        prune_magnitude(np.array(["a", "b"]), 0.5)
    with pytest.raises(TypeError, match="per_row"):
        prune_magnitude(np.ones(4), 0.5, per_row="yes")


def test_pruned_then_quantized_reports_sparsity(rng):
    w = rng.standard_normal((16, 64)).astype(np.float32)
    p, mask = prune_magnitude(w, 0.75, per_row=True)
    qt = qc.quantize(p, qc.QuantConfig.int8())
    m = qt.metrics(p)
    assert m.sparsity == 0.75
    assert np.all(qt.dequantize()[~mask] == 0)
