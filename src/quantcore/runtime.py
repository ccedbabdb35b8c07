"""Runtime facts and settings: CPU features, the kernel set, threads.

Environment variables, read once at import:

* ``QUANTCORE_ISA=scalar|avx2|avx512|neon`` forces that kernel set (normally a
  lower one than the best; tests use it to run every path).  A name this CPU or
  build cannot run gives a RuntimeWarning and the best available set.
* ``QUANTCORE_NUM_THREADS=n`` sets the kernels' thread count (default:
  ``OMP_NUM_THREADS`` when it holds a number, else the CPUs this process may
  run on).
* ``QUANTCORE_SPIN_US=us`` (read at the first multi-threaded call): how long an
  idle pool worker keeps polling for the next call before it sleeps, in
  microseconds (default 50; 0: sleep at once, which saves CPU time between
  calls that are far apart and costs a wake-up, tens of microseconds, per call).
"""

from __future__ import annotations

import os
import platform
import warnings
from typing import Any, Dict, Optional

from . import _ext
from ._version import __version__

__all__ = ["set_num_threads", "get_num_threads", "info", "show_config", "set_isa", "get_isa",
           "available_isas", "get_include"]


def set_num_threads(n: Optional[int]) -> None:
    """Threads the kernels use (None: back to the default).  Takes effect at the next call.

    The kernels run on quantcore's own thread pool: the calling thread takes
    part in every call and n - 1 pool workers (started when first needed) join
    it, taking chunks of the work from a shared counter.  A worker that is not
    running (the machine is busy) holds nothing up: the call ends when the
    chunks are done, so it degrades to one thread's speed, not to a scheduler
    time slice.  Small calls run on the calling thread alone.  Idle workers poll
    for ``QUANTCORE_SPIN_US`` (default 50) microseconds, then sleep.

    The count is process-wide.  Calls from several Python threads at once are
    safe (every kernel releases the GIL): one call at a time uses the pool,
    the others run on their own thread meanwhile.  After ``os.fork()`` the
    child starts its own workers.

    quantcore does not use OpenMP, so threadpoolctl neither lists nor limits
    quantcore's threads; ``threadpool_limits`` still limits the BLAS behind
    NumPy (and any OpenMP library loaded) in the same process.  Default:
    ``QUANTCORE_NUM_THREADS``, else ``OMP_NUM_THREADS`` when it holds a number,
    else the CPUs this process may run on.
    """
    if n is None:
        _ext.set_num_threads(0)
        return
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"n must be an int >= 1 or None, got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    _ext.set_num_threads(min(n, 1024))


def get_num_threads() -> int:
    """Threads the kernels use."""
    return _ext.get_num_threads()


def available_isas() -> tuple:
    """Kernel sets this build has and this CPU runs, lowest first."""
    return _ext.supported_isas()


def get_isa() -> str:
    """The kernel set in use."""
    return _ext.current_isa()


def set_isa(name: Optional[str]) -> None:
    """Use kernel set `name` (one of available_isas()); None: the best one."""
    if name is None:
        name = _ext.best_isa()
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    _ext.select_isa(name.strip().lower())


def get_include() -> str:
    """The folder with quantcore's C headers (``quantcore.h``, ``quantcore_api.h``),
    for ``include_dirs`` of an extension that calls the kernels; see
    docs/embedding.md.  The Cython declarations are
    ``quantcore/kernels.pxd`` (``from quantcore.kernels cimport *``)."""
    here = os.path.dirname(os.path.abspath(__file__))
    for d in (os.path.join(here, "include"),
              os.path.join(here, os.pardir, os.pardir, "csrc", "include")):  # a source tree
        if os.path.isfile(os.path.join(d, "quantcore_api.h")):
            return os.path.normpath(d)
    raise RuntimeError(f"quantcore's C headers are missing from {os.path.join(here, 'include')}; "
                       f"reinstall quantcore (setup.py copies csrc/include there)")


def info() -> Dict[str, Any]:
    """Version, build flags, the thread pool, CPU features and the kernel set in
    use, as a dict.  ``thread_pool``: "pthreads" (quantcore's own pool) or
    "serial" (a build without POSIX threads: every kernel on the calling
    thread); ``pool_workers``: worker threads started so far; ``pool_spin_us``:
    how long an idle worker polls before it sleeps (``QUANTCORE_SPIN_US``)."""
    feats = _ext.cpu_features()
    pool = _ext.pool_info()
    return {
        "version": __version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "build_flags": _ext.build_flags(),
        "thread_pool": pool["kind"],
        "num_threads": get_num_threads(),
        "pool_workers": pool["workers"],
        "pool_spin_us": pool["spin_us"],
        "cpu_features": [k for k, v in feats.items() if v],
        "isa_compiled": list(_ext.compiled_isas()),
        "isa_available": list(_ext.supported_isas()),
        "isa_best": _ext.best_isa(),
        "isa": get_isa(),
        "isa_forced": os.environ.get("QUANTCORE_ISA") or None,
    }


def show_config() -> None:
    """Print info() for people."""
    for k, v in info().items():
        if isinstance(v, list):
            v = ", ".join(v) if v else "(none)"
        elif isinstance(v, bool):
            v = "yes" if v else "no"
        elif k == "thread_pool" and v == "serial":
            v = "serial (no POSIX threads: every kernel on the calling thread)"
        print(f"{k:>14}: {v}")


def _apply_environment() -> None:
    isa = os.environ.get("QUANTCORE_ISA", "").strip().lower()
    if isa:
        try:
            set_isa(isa)
        except ValueError as e:
            warnings.warn(f"QUANTCORE_ISA={isa!r} ignored: {e}; using {_ext.best_isa()!r}",
                          RuntimeWarning, stacklevel=3)
    nt = os.environ.get("QUANTCORE_NUM_THREADS", "").strip()
    if nt:
        try:
            set_num_threads(int(nt))
        except ValueError:
            warnings.warn(f"QUANTCORE_NUM_THREADS={nt!r} ignored: expected an integer >= 1",
                          RuntimeWarning, stacklevel=3)
