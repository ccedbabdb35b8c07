"""Shared fixtures: every kernel set (ISA), the awkward shapes, seeded random
generators.  The plain helpers (AWKWARD_SHAPES, random_values, ...) live in
helpers.py so that test modules can import them for parametrization; the NumPy
oracle is oracle.py."""

from __future__ import annotations

import numpy as np
import pytest

import oracle as O
import quantcore
from helpers import AWKWARD_SHAPES, MAGNITUDES, random_values, seed_for, shape_id
from quantcore import _ext

ISAS = quantcore.available_isas()
SIMD_ISAS = tuple(i for i in ISAS if i != "scalar")

# The oracle numbers the kinds as qc_kind does; say so once, loudly.
assert (O.SYM8, O.ASYM8, O.SYM4, O.ASYM4, O.MIN4) == (
    _ext.KIND_SYM8, _ext.KIND_ASYM8, _ext.KIND_SYM4, _ext.KIND_ASYM4, _ext.KIND_MIN4)


def pytest_report_header(config):
    return (f"quantcore {quantcore.__version__}: ISAs {', '.join(ISAS)} "
            f"(in use: {quantcore.get_isa()}), threads {quantcore.get_num_threads()}")


@pytest.fixture(params=ISAS)
def isa(request):
    """Run the test on each kernel set this CPU runs; the one in use before the
    test (the best one, unless QUANTCORE_ISA forced another) is restored after."""
    before = quantcore.get_isa()
    quantcore.set_isa(request.param)
    try:
        yield request.param
    finally:
        quantcore.set_isa(before)


@pytest.fixture
def all_isas():
    """Every kernel set, scalar first; restores the one in use afterwards."""
    before = quantcore.get_isa()
    try:
        yield ISAS
    finally:
        quantcore.set_isa(before)


@pytest.fixture
def threads():
    """Lets a test change the thread count; restores it afterwards."""
    before = quantcore.get_num_threads()
    try:
        yield quantcore.set_num_threads
    finally:
        quantcore.set_num_threads(before)


@pytest.fixture(params=AWKWARD_SHAPES, ids=shape_id)
def awkward_shape(request):
    return request.param


@pytest.fixture
def rng(request):
    """A generator seeded from the test's id: reproducible, different per case."""
    return np.random.default_rng(seed_for(request.node.nodeid))


@pytest.fixture(params=MAGNITUDES, ids=lambda m: f"mag{m:g}")
def magnitude(request):
    return request.param


@pytest.fixture
def values(rng):
    """values(shape, scale=1.0, dist="normal", dtype=np.float32): random test data."""
    def make(shape, scale=1.0, dist="normal", dtype=np.float32):
        return random_values(rng, shape, scale, dist, dtype)
    return make


def pytest_collection_modifyitems(config, items):
    """Tests marked slow (the >2 GiB layer: minutes and ~8 GB of memory) run only
    when asked for, with ``-m slow`` or QUANTCORE_SLOW=1, so the README's plain
    ``python -m pytest tests`` stays quick on a small machine."""
    import os
    if config.getoption("-m") or os.environ.get("QUANTCORE_SLOW", "0") == "1":
        return
    skip = pytest.mark.skip(reason="slow (minutes, ~8 GB): run with -m slow or QUANTCORE_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
