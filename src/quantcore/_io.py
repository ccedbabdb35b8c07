"""Opening files for reading and replacing files safely.

Every file quantcore reads goes through :func:`open_regular` (or
:func:`stat_regular`): only regular files are opened, so a FIFO, a device node,
a socket or a directory is a ValueError naming it, never a hang.  Every file
quantcore writes goes through :func:`replacing`: the new content is written to
a temporary file beside the target, flushed to disk, and renamed over the
target only once everything succeeded; on any failure the temporary file is
removed and the target is left as it was.

Output rules (see docs/hardening.md):

* the target must be a regular file or not exist yet: a directory, FIFO,
  device node or socket is refused;
* a symbolic link is followed: the file it points to is replaced and the link
  stays; a link to nothing (or a loop) is refused;
* an existing read-only file is refused;
* a new file gets the usual permissions (0666 less the umask); a replaced file
  keeps its permission bits (and, where the process may, its owner and group);
* errors name the path the caller gave, never the temporary file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from typing import BinaryIO, Iterator, Optional, Type

__all__ = ["stat_regular", "open_regular", "check_output", "replacing", "same_file",
           "memory_limit", "check_fits"]

_TMP_SUFFIX = ".quantcore-tmp"


def _kind(mode: int) -> str:
    """What a stat mode is, in words."""
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISFIFO(mode):
        return "FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "character device"
    if stat.S_ISBLK(mode):
        return "block device"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISLNK(mode):
        return "symbolic link"
    return "special file"


def _os_error(cls: Type[OSError], code: Optional[int], message: str) -> OSError:
    """An OSError of class `cls` whose str() is exactly `message` (no "[Errno n]" and
    no file name appended) and whose ``errno`` is still `code`."""
    e = cls(message)
    e.errno = code
    return e


def _reraise(e: OSError, path: str, doing: str) -> OSError:
    """`e` restated about `path` (the caller's name for the file)."""
    if isinstance(e, FileNotFoundError) and doing == "read it":
        return _os_error(FileNotFoundError, errno.ENOENT, f"{path}: no such file")
    return _os_error(type(e), e.errno, f"{path}: cannot {doing}: {e.strerror or e}")


def stat_regular(path: str) -> os.stat_result:
    """``os.stat(path)`` for a regular file (symlinks followed).  A missing file is
    FileNotFoundError "<path>: no such file"; a directory, FIFO, device or socket
    is ValueError naming it."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise _reraise(e, path, "read it") from None
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{path} is a {_kind(st.st_mode)}, not a regular file; "
                         f"quantcore reads only regular files")
    return st


def open_regular(path: str) -> BinaryIO:
    """`path` opened for binary reading, after checking that it is a regular file
    (see :func:`stat_regular`).  The open itself never blocks: a FIFO put in
    place between the check and the open is caught by a second check on the
    open file."""
    stat_regular(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        raise _reraise(e, path, "read it") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{path} is a {_kind(st.st_mode)}, not a regular file; "
                             f"quantcore reads only regular files")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def same_file(a: str, b: str) -> bool:
    """Whether paths `a` and `b` name one existing file (same device and inode,
    symlinks followed: hard links and links to it count)."""
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _read_only(st: os.stat_result, target: str) -> bool:
    """Read-only for this process: no write access, or (for root, who may write
    anything) no write permission bit at all."""
    if not os.access(target, os.W_OK):
        return True
    return hasattr(os, "geteuid") and os.geteuid() == 0 and not st.st_mode & 0o222


def check_output(path: str) -> str:
    """Check that `path` may be replaced by a new file; returns the file to
    replace (`path`, or the file a symlink at `path` points to).  Raises
    ValueError for a directory, a FIFO, a device, a socket or a dangling
    symlink, PermissionError for a read-only file, FileNotFoundError when the
    directory does not exist."""
    if not path:
        raise ValueError("the output path is empty")
    try:
        lst = os.lstat(path)
    except FileNotFoundError:
        lst = None
    except OSError as e:
        raise _reraise(e, path, "write it") from None
    target = path
    st = lst
    if lst is not None and stat.S_ISLNK(lst.st_mode):
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise ValueError(f"{path} is a symbolic link to {os.readlink(path)!r}, which does not "
                             f"exist; quantcore writes through a link only to an existing "
                             f"file") from None
        except OSError as e:  # a loop, say
            raise _reraise(e, path, "write it") from None
        target = os.path.realpath(path)
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            raise ValueError(f"{path} is a directory; give the name of the file to write")
        if not stat.S_ISREG(st.st_mode):
            kind = _kind(st.st_mode)
            raise ValueError(f"{path} is a {kind}, not a regular file; quantcore writes only "
                             f"regular files (writing would replace the {kind} with a new file)")
        if _read_only(st, target):
            raise _os_error(PermissionError, errno.EACCES,
                            f"{path} is read-only (mode {stat.S_IMODE(st.st_mode):04o}); "
                            f"quantcore does not replace a read-only file: make it writable "
                            f"or remove it first")
    directory = os.path.dirname(os.path.abspath(target))
    if not os.path.isdir(directory):
        raise _os_error(FileNotFoundError, errno.ENOENT,
                        f"{path}: cannot write it: directory {directory} does not exist")
    return target


def _create_temp(directory: str, base: str, path: str, mode: int) -> "tuple[int, str]":
    """A new empty file in `directory` (O_EXCL, `mode` less the umask): (fd, name)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        name = os.path.join(directory, f".{base[:80]}.{secrets.token_hex(4)}{_TMP_SUFFIX}")
        try:
            return os.open(name, flags, mode), name
        except FileExistsError:
            continue
        except OSError as e:
            raise _reraise(e, path, "write it") from None
    raise _os_error(FileExistsError, errno.EEXIST,
                    f"{path}: cannot write it: no free temporary name in {directory}")


def _unlink_quietly(name: str) -> None:
    try:
        os.unlink(name)
    except OSError:
        pass


def _fsync_dir(directory: str) -> None:
    """Make a rename in `directory` durable (where the platform allows it)."""
    flag = getattr(os, "O_DIRECTORY", None)
    if flag is None:
        return
    try:
        fd = os.open(directory, os.O_RDONLY | flag)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def replacing(path: "str | bytes | os.PathLike") -> Iterator[str]:
    """Replace the file at `path` with what the ``with`` body writes.

    Yields the name of a new, empty temporary file beside the target; the body
    writes the whole content there (by name).  When the body returns, the
    temporary file is flushed to disk and renamed over the target (see
    :func:`check_output` for what may be replaced).  When the body (or the flush,
    or the rename) raises, the temporary file is removed, the target is left
    untouched and the exception propagates; an OSError about the temporary file
    is restated about `path`.
    """
    path = os.fsdecode(os.fspath(path))
    target = check_output(path)
    directory = os.path.dirname(os.path.abspath(target))
    try:
        old: Optional[os.stat_result] = os.stat(target)
    except FileNotFoundError:
        old = None
    except OSError as e:
        raise _reraise(e, path, "write it") from None
    fd, tmp = _create_temp(directory, os.path.basename(target), path,
                           0o600 if old is not None else 0o666)
    try:
        try:
            if old is not None:  # keep the replaced file's owner and permission bits
                if hasattr(os, "fchown") and (old.st_uid, old.st_gid) != _ids(fd):
                    try:
                        os.fchown(fd, old.st_uid, old.st_gid)
                    except OSError:
                        pass
                os.fchmod(fd, stat.S_IMODE(old.st_mode) & 0o777)
        finally:
            os.close(fd)
        yield tmp
        fd = os.open(tmp, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        # what stands at the target may have changed while the body ran
        try:
            now = os.lstat(target)
        except FileNotFoundError:
            now = None
        if now is not None and not stat.S_ISREG(now.st_mode):
            raise ValueError(f"{path} became a {_kind(now.st_mode)} while quantcore was writing; "
                             f"not replacing it")
        os.replace(tmp, target)
    except BaseException as e:
        _unlink_quietly(tmp)
        if isinstance(e, OSError) and getattr(e, "filename", None) in (None, tmp) \
                and e.errno is not None:
            raise _reraise(e, path, "write it") from None
        raise
    _fsync_dir(directory)


def _ids(fd: int) -> "tuple[int, int]":
    st = os.fstat(fd)
    return st.st_uid, st.st_gid


# ---- memory --------------------------------------------------------------------------

def _cgroup_limit() -> Optional[int]:
    for name in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(name) as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit():
            return int(text)
    return None


def memory_limit() -> Optional[int]:
    """The most memory this process could have, in bytes: the machine's physical
    memory, lowered by a cgroup limit or an address-space/data rlimit when
    there is one; None when none of these is known."""
    limits = []
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        if pages > 0 and size > 0:
            limits.append(pages * size)
    except (AttributeError, ValueError, OSError):
        pass
    cg = _cgroup_limit()
    if cg is not None:
        limits.append(cg)
    try:
        import resource
        for which in ("RLIMIT_AS", "RLIMIT_DATA"):
            if hasattr(resource, which):
                soft = resource.getrlimit(getattr(resource, which))[0]
                if soft != resource.RLIM_INFINITY and soft > 0:
                    limits.append(soft)
    except ImportError:  # pragma: no cover (not on POSIX)
        pass
    return min(limits) if limits else None


def check_fits(nbytes: int, path: str, what: str) -> None:
    """ValueError when `what` of file `path` needs more than :func:`memory_limit`."""
    limit = memory_limit()
    if limit is not None and nbytes > limit:
        raise ValueError(f"{path}: {what} needs {nbytes:,} bytes of memory, more than this "
                         f"machine has ({limit:,} bytes)")
