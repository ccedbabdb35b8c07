"""Arrays that sit right against an unreadable page, so that a kernel reading (or
writing) one byte past the end -- or before the start -- segfaults instead of
silently using a neighbour's bytes.

``guarded(a)`` copies `a` (C order) into an anonymous mapping whose last data
byte is the last byte before a ``PROT_NONE`` page; ``guarded(a, before=True)``
puts the data at the start of a page that follows a ``PROT_NONE`` page.  The
returned array keeps the mapping alive.  POSIX only (mmap + mprotect through
ctypes); run the calls in a child process (tests/caserunner.py) so that a crash
is a failed test, not a dead session.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap

import numpy as np

PAGE = mmap.PAGESIZE
_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.mprotect.restype = ctypes.c_int
PROT_NONE = 0


def _protect(addr: int, length: int) -> None:
    if _libc.mprotect(ctypes.c_void_p(addr), length, PROT_NONE) != 0:
        raise OSError(ctypes.get_errno(), "mprotect failed")


def guarded(a, before: bool = False, writeable: bool = True) -> np.ndarray:
    """A C-contiguous copy of `a` against a PROT_NONE page (after it, or before it)."""
    a = np.ascontiguousarray(a)
    nbytes = a.nbytes
    data_pages = max(1, -(-nbytes // PAGE))
    total = (data_pages + 2) * PAGE
    mm = mmap.mmap(-1, total, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
                   prot=mmap.PROT_READ | mmap.PROT_WRITE)
    base = ctypes.addressof(ctypes.c_char.from_buffer(mm))
    _protect(base, PAGE)                                   # a page before the data
    _protect(base + (data_pages + 1) * PAGE, PAGE)         # and one after it
    if before:
        offset = PAGE
    else:
        offset = (data_pages + 1) * PAGE - nbytes
    # frombuffer needs the offset to be a multiple of the itemsize, which it is
    # (nbytes is), except for before=False with a zero-size array
    out = np.frombuffer(mm, dtype=a.dtype, count=a.size, offset=offset).reshape(a.shape)
    if a.size:
        out[...] = a
    if not writeable:
        out.setflags(write=False)
    return out


def guarded_view(base, index, before: bool = False) -> np.ndarray:
    """``guarded(base)[index]``: a strided or reversed view into guarded memory (the
    view's last element is at the end of the mapping only if it is base's)."""
    return guarded(base, before=before)[index]
