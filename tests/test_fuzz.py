"""The fuzz harness (tests/fuzz/fuzz_loaders.py) in CI: every file of
tests/fuzz/corpus (seeds and the cases fuzzing has found) replayed as a
regression test in a crash-attributing child, and a short atheris run
(QUANTCORE_FUZZ_SECONDS, default 10 s) from a copy of the corpus.  Longer runs
by hand: ``python tests/fuzz/fuzz_loaders.py tests/fuzz/corpus -max_total_time=600``.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys

import pytest

from caserunner import run_cases

HERE = os.path.dirname(os.path.abspath(__file__))
FUZZ = os.path.join(HERE, "fuzz")
CORPUS = os.path.join(FUZZ, "corpus")
FILES = sorted(os.listdir(CORPUS)) if os.path.isdir(CORPUS) else []


def child_cases():
    sys.path.insert(0, FUZZ)
    import fuzz_loaders

    def make(name):
        def run():
            with open(os.path.join(CORPUS, name), "rb") as f:
                fuzz_loaders.TestOneInput(f.read())
        return run
    return {name: make(name) for name in FILES}


@pytest.fixture(scope="module")
def outcomes():
    return run_cases("test_fuzz", FILES)


def test_corpus_is_there():
    assert any(f.startswith("seed-") for f in FILES)


@pytest.mark.parametrize("name", FILES)
def test_corpus_case(name, outcomes):
    res = outcomes[name]
    assert res["status"] == "ok", f"{name}: {res['status']} {res['type']}: {res['msg']}"


@pytest.mark.skipif(importlib.util.find_spec("atheris") is None, reason="atheris is not installed")
def test_fuzz_for_a_bounded_time(tmp_path):
    seconds = int(os.environ.get("QUANTCORE_FUZZ_SECONDS", "10"))
    corpus = tmp_path / "corpus"
    shutil.copytree(CORPUS, corpus)  # libFuzzer adds what it finds to the first corpus dir
    r = subprocess.run([sys.executable, os.path.join(FUZZ, "fuzz_loaders.py"), str(corpus),
                        f"-max_total_time={seconds}", f"-artifact_prefix={tmp_path}/",
                        "-print_final_stats=1", "-timeout=20", "-rss_limit_mb=4096"],
                       capture_output=True, text=True, timeout=seconds + 240)
    out = r.stdout + r.stderr
    runs = re.findall(r"stat::number_of_executed_units:\s*(\d+)", out)
    found = [p.name for p in tmp_path.iterdir() if p.name.startswith(("crash-", "timeout-", "oom-"))]
    print(f"fuzz: {runs[-1] if runs else '?'} executions in {seconds} s")
    assert r.returncode == 0 and not found, (
        f"the fuzzer found {found} (copy it into tests/fuzz/corpus once fixed):\n{out[-4000:]}")
