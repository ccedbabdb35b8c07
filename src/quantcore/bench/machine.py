"""What ``quantcore bench`` learns about the machine it runs on: the CPU, the
cache sizes (which set how many layer copies a memory-bound row rotates through
and the sizes of the cache-level classes), the load, and the read probe that a
row's %bw compares against.

Cache sizes come from Linux's sysfs (``/sys/devices/system/cpu/cpu0/cache``: the
caches that CPU 0 sees, so the L3 slice of its core complex), else from glibc's
``sysconf``, else an assumption that the report names as such.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import math
import os
import platform
import select
import subprocess
import sys
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np

from .. import _ext
from .timing import rotating

__all__ = ["Caches", "cache_sizes", "cpu_name", "load_average", "size_classes",
           "layer_copies", "read_probe", "host", "busy_core", "BusyCoreError"]

_SYSFS = "/sys/devices/system/cpu/cpu0/cache"
_ASSUMED = (32 << 10, 1 << 20, 32 << 20)  # when the machine does not say
#: glibc's sysconf names (bits/confname.h): _SC_LEVEL1_DCACHE_SIZE, _SC_LEVEL2_CACHE_SIZE,
#: _SC_LEVEL3_CACHE_SIZE; Python's os.sysconf does not know them.
_GLIBC_SC = (188, 191, 194)


@dataclass(frozen=True)
class Caches:
    """Data cache sizes in bytes (0: the level is absent) and where they came from
    ("sysfs", "sysconf" or "assumed")."""
    l1d: int
    l2: int
    l3: int
    source: str

    @property
    def last_level(self) -> int:
        """The largest cache: L3, or L2 where there is no L3."""
        return max(self.l1d, self.l2, self.l3)

    def describe(self) -> str:
        """``"L1d 32 KiB, L2 1 MiB, L3 32 MiB (sysfs)"``."""
        parts = [f"{name} {_size(v)}" for name, v in (("L1d", self.l1d), ("L2", self.l2),
                                                       ("L3", self.l3)) if v]
        return ", ".join(parts) + f" ({self.source})"


def _size(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            v = n / (1 << shift)
            return f"{v:.0f} {unit}" if v == int(v) else f"{v:.1f} {unit}"
    return f"{n} B"


def _parse_size(text: str) -> int:
    """sysfs sizes: ``"32K"``, ``"1024K"``, ``"16M"``, ``"512"``."""
    text = text.strip().upper()
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
    return int(text.rstrip("KMG")) * mult


def _from_sysfs(root: str) -> Optional[Tuple[int, int, int]]:
    sizes = {1: 0, 2: 0, 3: 0}
    try:
        entries = sorted(e for e in os.listdir(root) if e.startswith("index"))
    except OSError:
        return None
    for e in entries:
        d = os.path.join(root, e)
        try:
            with open(os.path.join(d, "level")) as f:
                level = int(f.read())
            with open(os.path.join(d, "type")) as f:
                kind = f.read().strip()
            with open(os.path.join(d, "size")) as f:
                size = _parse_size(f.read())
        except (OSError, ValueError):
            continue
        if kind in ("Data", "Unified") and level in sizes:
            sizes[level] = max(sizes[level], size)
    return (sizes[1], sizes[2], sizes[3]) if any(sizes.values()) else None


def _from_sysconf() -> Optional[Tuple[int, int, int]]:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.sysconf.restype = ctypes.c_long
        sizes = tuple(max(0, int(libc.sysconf(n))) for n in _GLIBC_SC)
    except (OSError, AttributeError):
        return None
    return (sizes[0], sizes[1], sizes[2]) if any(sizes) else None


_CACHES: Dict[str, Caches] = {}


def cache_sizes(sysfs_root: str = _SYSFS) -> Caches:
    """The data cache sizes of this machine, read once per process."""
    if sysfs_root not in _CACHES:
        for source, found in (("sysfs", _from_sysfs(sysfs_root)), ("sysconf", _from_sysconf())):
            if found is not None:
                _CACHES[sysfs_root] = Caches(*found, source=source)
                break
        else:
            _CACHES[sysfs_root] = Caches(*_ASSUMED, source="assumed")
    return _CACHES[sysfs_root]


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or what the platform module says."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                    return " ".join(value.split())
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def load_average() -> Optional[float]:
    """The 1-minute load average, or None where the OS has none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def size_classes(caches: Optional[Caches] = None) -> Dict[str, Tuple[int, int]]:
    """Weight shapes (rows, in_features) by the cache level their float32 bytes
    fit: half of L1d, of L2 and of L3, and DRAM-sized (4x the last-level cache,
    at least 256 MiB, at most 1 GiB)."""
    c = caches or cache_sizes()
    llc = c.last_level

    def rows(nbytes: int, cols: int) -> int:
        return max(1, nbytes // (4 * cols))

    dram = min(1 << 30, max(256 << 20, 4 * llc))
    return {"L1": (rows((c.l1d or 32 << 10) // 2, 256), 256),
            "L2": (rows((c.l2 or 1 << 20) // 2, 1024), 1024),
            "L3": (rows((c.l3 or llc) // 2, 4096), 4096),
            "DRAM": (rows(dram, 4096), 4096)}


ROTATE_FACTOR = 4          # rotate until the copies exceed 4x the last-level cache
MAX_COPIES = 32            # ... with at most this many copies of a layer


def layer_copies(nbytes: int, caches: Optional[Caches] = None) -> int:
    """Copies of a layer of `nbytes` to rotate through so that together they exceed
    4x the last-level cache, as a model's successive layers do (at most 32)."""
    llc = (caches or cache_sizes()).last_level
    return max(1, min(MAX_COPIES, math.ceil(ROTATE_FACTOR * llc / max(1, nbytes))))


def read_probe(nbytes: int, copies: int) -> Callable[[], Any]:
    """A callable that reads the next of `copies` buffers of `nbytes` (rounded up
    to a cache line) with the kernels' threads, as a rotating row reads the next
    copy of its layer: time it like the row to get the row's ceiling."""
    n = max(64, -(-int(nbytes) // 64) * 64)
    bufs: List[np.ndarray] = [np.ones(n // 8, np.uint64) for _ in range(max(1, copies))]
    return rotating([functools.partial(_ext.read_probe, b) for b in bufs])


def host() -> dict:
    """The machine as plain JSON values (for the report's JSON document)."""
    c = cache_sizes()
    return {"platform": platform.platform(), "cpu": cpu_name(), "cpu_count": os.cpu_count(),
            "caches": {"l1d": c.l1d, "l2": c.l2, "l3": c.l3, "source": c.source},
            "load_average_1min": load_average()}


class BusyCoreError(RuntimeError):
    """The process that should keep a core busy did not start."""


# The busy process: pins itself to one CPU where it can, says it is running, then
# spins until it is killed or its parent is gone (checked every ~10^6 steps, so
# that it never outlives a parent that was killed without cleaning up).
_SPINNER = """
import os, sys
cpu = int(sys.argv[1])
if cpu >= 0 and hasattr(os, "sched_setaffinity"):
    try:
        os.sched_setaffinity(0, {cpu})
    except OSError:
        pass
parent = os.getppid()
sys.stdout.write("1")
sys.stdout.flush()
i = 0
while True:
    i += 1
    if not i & 0xFFFFF and os.getppid() != parent:
        break
"""


def _first_cpu() -> int:
    try:
        return min(os.sched_getaffinity(0))  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return -1


@contextlib.contextmanager
def busy_core(start_timeout_s: float = 30.0) -> Iterator[int]:
    """Run a child process that keeps one core busy (a spinning loop, pinned to
    the first CPU this process may use, where the OS allows pinning) for the
    duration of the ``with`` block; yields its pid.  It has started spinning when
    the block begins and is killed and reaped when the block ends, whatever ends
    it (an exception, Ctrl-C)."""
    proc = subprocess.Popen([sys.executable, "-S", "-c", _SPINNER, str(_first_cpu())],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        if os.name == "posix":
            ready, _, _ = select.select([proc.stdout], [], [], start_timeout_s)
            if not ready:
                raise BusyCoreError(f"the busy process did not start within "
                                    f"{start_timeout_s:g} s")
        if proc.stdout.read(1) != b"1":
            raise BusyCoreError(f"the busy process exited at start (status {proc.wait()})")
        yield proc.pid
    finally:
        if proc.poll() is None:
            proc.kill()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover (a kill is not refused)
            pass
        if proc.stdout is not None:
            proc.stdout.close()
