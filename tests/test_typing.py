"""PEP 561: quantcore ships py.typed and stubs for its compiled module; mypy
accepts a user's file that uses the public API (tests/typing_example.py) and
rejects misuse (so the hints are real, not Any everywhere), and quantcore's own
sources check clean.  Skipped without mypy."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import quantcore

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.dirname(os.path.dirname(os.path.abspath(quantcore.__file__)))


def _mypy(path, tmp_path, *extra):
    pytest.importorskip("mypy", reason="mypy is not installed (pip install mypy)")
    env = dict(os.environ)
    if os.path.basename(SRC) not in ("site-packages", "dist-packages"):
        env["MYPYPATH"] = SRC  # a source tree: the quantcore under test, not an installed one
    # (an installed quantcore is found by mypy itself, through its py.typed)
    cache = os.environ.get("QUANTCORE_MYPY_CACHE", str(tmp_path / "mypy_cache"))
    # --follow-imports=silent: quantcore is analysed for its types but, as for an
    # installed package, only the user's file is reported on
    return subprocess.run([sys.executable, "-m", "mypy", "--follow-imports=silent",
                           "--cache-dir", cache, "--no-error-summary", "--python-version",
                           f"{sys.version_info[0]}.{sys.version_info[1]}", *extra, str(path)],
                          env=env, capture_output=True, text=True, timeout=600)


def test_py_typed_and_stubs_ship():
    pkg = os.path.dirname(quantcore.__file__)
    assert os.path.isfile(os.path.join(pkg, "py.typed"))
    assert os.path.isfile(os.path.join(pkg, "_ext.pyi"))
    # the stub lists what the compiled module has (no stale or missing public names)
    import ast
    tree = ast.parse(open(os.path.join(pkg, "_ext.pyi")).read())
    stubbed = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            stubbed.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            stubbed.add(node.target.id)
    public = {n for n in dir(quantcore._ext) if not n.startswith("__") and n not in ("np",)
              and not n.startswith("_SRC")}
    assert public - stubbed == set(), "names missing from _ext.pyi"
    assert stubbed - public == set(), "names in _ext.pyi that _ext does not have"


# ~10-60 s cold (mypy reads numpy's stubs), a few seconds with a warm cache
def test_mypy_accepts_the_example(tmp_path):
    r = _mypy(os.path.join(HERE, "typing_example.py"), tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr


# the package itself: optional peers (torch, onnx, gguf) may be absent, hence
# --ignore-missing-imports; the same run as `python -m mypy src/quantcore --ignore-missing-imports`
# By module (-p), not by path: a path inside site-packages (CI installs the package)
# makes mypy read site-packages as a source root, where other modules shadow libraries.
def test_mypy_accepts_quantcore_itself(tmp_path):
    r = _mypy("quantcore", tmp_path, "--ignore-missing-imports", "-p")
    assert r.returncode == 0, r.stdout + r.stderr


def test_mypy_rejects_misuse(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import numpy as np\n"
        "import quantcore as qc\n"
        "qc.set_num_threads('2')\n"
        "cfg: qc.QuantConfig = qc.QuantConfig.int8()\n"
        "n: str = qc.QuantizedLinear.from_linear(np.ones((2, 32), np.float32)).in_features\n"
        "qc.quantize(np.ones(4), config='int8')\n")
    r = _mypy(bad, tmp_path)
    out = r.stdout
    assert r.returncode == 1, out + r.stderr
    assert "bad.py:3" in out and "bad.py:5" in out and "bad.py:6" in out, out


def test_example_runs(tmp_path):
    import runpy
    mod = runpy.run_path(os.path.join(HERE, "typing_example.py"))
    mod["run"]()
    pytest.importorskip("gguf", reason="the gguf package is not installed")
    got = mod["gguf_round_trip"](str(tmp_path / "t.gguf"))
    assert set(got) == {"w", "b"}
