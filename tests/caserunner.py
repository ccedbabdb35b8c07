"""Run many small test cases in a child process, one at a time, so that a crash
(a signal: segfault, abort, a sanitizer report) is caught and blamed on the case
that caused it instead of killing the test session.

Parent side: ``run_cases(module, names)`` starts ``python tests/caserunner.py``,
sends it the module name and the case names on stdin, and reads one line per
case.  When the child dies, the case that had started but not finished is
recorded as ``crash`` (with the signal and the tail of stderr, where faulthandler
printed the Python stack) and a fresh child carries on with the cases after it.

Child side: the module's ``child_cases()`` returns ``{name: callable}``; each
callable is run once and its outcome reported as
``{"status": "ok" | "raised" | "skip" | "crash", "type": ..., "msg": ...}``:
``raised`` carries the exception's type name and message (whether that is a
pass is the parent's call), ``skip`` comes from a callable raising
:class:`Skip`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from typing import Dict, Iterable, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
START, DONE = "@@case-start ", "@@case-done "


class Skip(Exception):
    """Raised by a case that cannot run here (an API not implemented yet, say)."""


def _describe_rc(rc: int) -> str:
    if rc < 0:
        try:
            return f"killed by signal {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exit status {rc}"


def run_cases(module: str, names: Iterable[str], timeout: float = 600.0,
              env: Optional[Dict[str, str]] = None) -> Dict[str, dict]:
    """Outcome of each case of `module` (importable from tests/), in a child process."""
    todo = list(names)
    results: Dict[str, dict] = {}
    child_env = dict(os.environ if env is None else env)
    child_env["PYTHONPATH"] = os.pathsep.join(
        [HERE] + [p for p in child_env.get("PYTHONPATH", "").split(os.pathsep) if p])
    child_env.setdefault("PYTHONFAULTHANDLER", "1")
    while todo:
        proc = subprocess.run([sys.executable, os.path.join(HERE, "caserunner.py")],
                              input=json.dumps({"module": module, "names": todo}),
                              capture_output=True, text=True, timeout=timeout, env=child_env,
                              cwd=os.path.dirname(HERE))
        started = None
        for line in proc.stdout.splitlines():
            if line.startswith(START):
                started = line[len(START):]
            elif line.startswith(DONE):
                name, _, payload = line[len(DONE):].partition(" ")
                results[name] = json.loads(payload)
                started = None
        if proc.returncode == 0 and started is None:
            missing = [n for n in todo if n not in results]
            for n in missing:  # the child never got to them: say so loudly
                results[n] = {"status": "crash", "type": None,
                              "msg": "the child process exited without running this case"}
            break
        if started is None:  # died between cases (import error, say): blame the next one
            remaining = [n for n in todo if n not in results]
            if not remaining:
                break
            started = remaining[0]
        results[started] = {"status": "crash", "type": None,
                            "msg": f"child {_describe_rc(proc.returncode)} during this case; "
                                   f"stderr tail:\n{proc.stderr[-3000:]}"}
        todo = todo[todo.index(started) + 1:]
    return results


def _child() -> int:
    req = json.loads(sys.stdin.read())
    import importlib
    mod = importlib.import_module(req["module"])
    global Skip
    import caserunner  # the class the cases raise (this file runs as __main__)
    Skip = caserunner.Skip
    cases = mod.child_cases()
    out = sys.stdout
    for name in req["names"]:
        out.write(f"{START}{name}\n")
        out.flush()
        try:
            fn = cases[name]
        except KeyError:
            res = {"status": "raised", "type": "KeyError", "msg": f"no case named {name!r}"}
        else:
            try:
                fn()
                res = {"status": "ok", "type": None, "msg": ""}
            except Skip as e:
                res = {"status": "skip", "type": None, "msg": str(e)}
            except BaseException as e:  # noqa: BLE001 - every outcome is reported
                res = {"status": "raised", "type": type(e).__name__, "msg": str(e)[:2000],
                       "mro": [c.__name__ for c in type(e).__mro__]}
        out.write(f"{DONE}{name} {json.dumps(res)}\n")
        out.flush()
    return 0


if __name__ == "__main__":
    import faulthandler
    faulthandler.enable()
    sys.exit(_child())
