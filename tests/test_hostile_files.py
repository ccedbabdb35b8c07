"""Hostile paths and files: nothing lost, nothing hung.

Each case runs in a child process (tests/caserunner.py) under an alarm, so a
case that hangs (a FIFO opened for reading blocks forever) or crashes fails on
its own instead of blocking the test run; command-line cases run quantcore in a
further subprocess with a timeout.  A case passes when it returns: it checks
the exception it expects (type and the words of its message) and what must
hold afterwards (the file that was there is unchanged, no temporary file is
left, /dev/null is still a character device, ...).

Readers: regular files only (FIFO, device, directory: ValueError naming it).
Writers: a temporary file beside the target renamed over it once complete;
the input, a directory, a FIFO or a device, a dangling symlink and a read-only
file are refused; symlinks are followed; the umask is honoured; a failure in
the middle of a write (an exception, a full disk) leaves the old file and no
temporary one, and the error names the user's path.  Clear errors for
QuantConfig fields of the wrong type, huge integers in files and metrics,
float64 values beyond float32, files that ask for more memory than the machine
has.

Device nodes: only /dev/null and /dev/zero are used.  /dev/zero is only ever
named as an input (quantcore refuses it before opening it); /dev/null as an
output runs with os.replace, os.rename and os.unlink guarded so that no
regression could ever replace it, and it is checked to be the same character
device before and after.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import stat
import struct
import subprocess
import sys
import tempfile
from typing import Callable, Dict, Iterator, Sequence, Tuple, Type, Union

import numpy as np
import pytest

from caserunner import Skip, run_cases

CASE_SECONDS = 150       # a case still running after this long has hung
SUBPROCESS_SECONDS = 60   # one `python -m quantcore ...`
TMP_MARK = "quantcore-tmp"  # in the names of quantcore's temporary files
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ExcTypes = Union[Type[BaseException], Tuple[Type[BaseException], ...]]


# ---- helpers (they run in the child) --------------------------------------------------------

class CaseTimeout(Exception):
    """A case ran past CASE_SECONDS."""


@contextlib.contextmanager
def _deadline(seconds: int) -> Iterator[None]:
    def on_alarm(signum, frame):
        raise CaseTimeout(f"still running after {seconds} s: it hangs")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _raises(exc: ExcTypes, words: Sequence[str], fn: Callable[[], object],
            forbid: Sequence[str] = (TMP_MARK,)) -> str:
    """Run fn; it must raise `exc` whose message names every word of `words`
    (case-insensitive) and none of `forbid`.  Returns the message."""
    try:
        fn()
    except exc as e:
        msg = str(e)
        low = msg.lower()
        missing = [w for w in words if w.lower() not in low]
        if missing:
            raise AssertionError(f"{type(e).__name__}: {msg!r} does not name {missing}") from None
        bad = [w for w in forbid if w.lower() in low]
        if bad:
            raise AssertionError(f"{type(e).__name__}: {msg!r} mentions {bad}") from None
        return msg
    except BaseException as e:  # noqa: BLE001 - the wrong exception is the failure
        raise AssertionError(f"raised {type(e).__name__}: {str(e)[:500]!r}, expected {exc}") from None
    raise AssertionError(f"no exception, expected {exc}")


@contextlib.contextmanager
def _tmpdir() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="qc-hostile-") as d:
        yield d


def _listing(d: str) -> list:
    return sorted(os.listdir(d))


def _no_temps(*dirs: str) -> None:
    for d in dirs:
        left = [n for n in os.listdir(d) if TMP_MARK in n]
        assert not left, f"temporary files left in {d}: {left}"


def _read(p: str) -> bytes:
    with open(p, "rb") as f:
        return f.read()


def _weights(rows: int = 16, cols: int = 64) -> Dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    return {"layer.w": rng.standard_normal((rows, cols)).astype(np.float32),
            "layer.b": rng.standard_normal(rows).astype(np.float32)}


def _model_file(d: str, name: str = "in.safetensors", **kw) -> str:
    import quantcore as qc
    p = os.path.join(d, name)
    qc.save(p, _weights(**kw))
    return p


def _gguf_file(d: str, name: str = "good.gguf") -> str:
    from quantcore import gguf as qg
    p = os.path.join(d, name)
    qg.save(p, {"w": np.ones((2, 32), np.float32)}, metadata={"m.s": "kept"})
    return p


def _need_gguf() -> None:
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise Skip("the gguf package is not installed (gguf.save needs it)") from None


def _fifo(d: str, name: str = "fifo") -> str:
    p = os.path.join(d, name)
    try:
        os.mkfifo(p)
    except (AttributeError, OSError) as e:
        raise Skip(f"cannot make a FIFO here: {e}") from None
    return p


def _char_device(path: str) -> Tuple[int, int]:
    """(inode, device number) of the character device at `path`."""
    st = os.lstat(path)
    if not stat.S_ISCHR(st.st_mode):
        raise Skip(f"{path} is not a character device on this machine")
    return st.st_ino, st.st_rdev


@contextlib.contextmanager
def _dev_guard() -> Iterator[None]:
    """Make any rename or replace onto /dev, and any unlink there, fail loudly instead
    of happening: a regression must never destroy the machine's device nodes.  (A
    temporary file of quantcore's own in /dev may still be removed.)"""
    real = {n: getattr(os, n) for n in ("replace", "rename", "unlink", "remove")}

    def guard(name):
        def call(*args, **kw):
            touched = args[1:2] if name in ("replace", "rename") else args[:1]
            for a in touched:
                if os.path.abspath(os.fspath(a)).startswith("/dev/") and \
                        "quantcore" not in os.path.basename(os.fspath(a)):
                    raise AssertionError(f"quantcore called os.{name} on {a}")
            return real[name](*args, **kw)
        return call

    for n in real:
        setattr(os, n, guard(n))
    try:
        yield
    finally:
        for n, f in real.items():
            setattr(os, n, f)


def _cli(*argv: str) -> Tuple[int, str, str]:
    """quantcore's command line in this process: (exit status, stderr, stdout)."""
    from quantcore import cli
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        rc = cli.main(list(argv))
    return rc, err.getvalue().strip(), out.getvalue()


def _cli_sub(*argv: str, preexec=None) -> Tuple[int, str, str]:
    """`python -m quantcore ...` in a subprocess with a timeout (a hang fails)."""
    try:
        p = subprocess.run([sys.executable, "-m", "quantcore", *argv], capture_output=True,
                           text=True, timeout=SUBPROCESS_SECONDS, cwd=REPO, preexec_fn=preexec)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"quantcore {' '.join(argv)} still running after "
                             f"{SUBPROCESS_SECONDS} s: it hangs") from None
    return p.returncode, p.stderr.strip(), p.stdout


def _one_line_error(res: Tuple[int, str, str], *words: str) -> str:
    rc, err, _ = res
    assert rc not in (0, None), f"exit status {rc}, expected an error; stderr {err[:300]!r}"
    assert "Traceback" not in err and len(err.splitlines()) == 1, f"not a one-line error: {err[:800]}"
    missing = [w for w in words if w.lower() not in err.lower()]
    assert not missing, f"{err!r} does not name {missing}"
    assert TMP_MARK not in err, f"{err!r} names a temporary file"
    return err


def _safetensors(header: bytes, data: bytes = b"") -> bytes:
    return struct.pack("<Q", len(header)) + header + data


def _edit_quantcore_meta(path: str, edit: Callable[[dict], None]) -> None:
    """Rewrite the quantcore JSON of a file quantcore.save wrote."""
    raw = _read(path)
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    meta = json.loads(header["__metadata__"]["quantcore"])
    edit(meta)
    header["__metadata__"]["quantcore"] = json.dumps(meta)
    with open(path, "wb") as f:
        f.write(_safetensors(json.dumps(header).encode(), raw[8 + n:]))


def _sparse(path: str, head: bytes, size: int) -> None:
    with open(path, "wb") as f:
        f.write(head)
        try:
            f.truncate(size)
        except OSError as e:
            raise Skip(f"this filesystem cannot hold a sparse file of {size} bytes: {e}") from None


def _huge() -> int:
    """Bytes a file declares: 1 TiB, or twice what this machine could hold if more."""
    from quantcore import _io
    limit = _io.memory_limit() or 0
    return max(1 << 40, -(-2 * limit // (1 << 20)) * (1 << 20))


CASES: Dict[str, Callable[[], None]] = {}


def case(fn: Callable[[], None]) -> Callable[[], None]:
    """Register a case under its name (case_a_b -> a-b)."""
    CASES[fn.__name__[len("case_"):].replace("_", "-")] = fn
    return fn


# ---- readers: regular files only, never a hang --------------------------------------------

@case
def case_fifo_load():
    """quantcore.load on a FIFO: ValueError naming it, no hang."""
    import quantcore as qc
    with _tmpdir() as d:
        p = _fifo(d)
        _raises(ValueError, [p, "FIFO", "not a regular file"], lambda: qc.load(p))
        assert stat.S_ISFIFO(os.lstat(p).st_mode)


@case
def case_fifo_read_header():
    """quantcore.files.read_header on a FIFO: ValueError naming it, no hang."""
    import quantcore as qc
    with _tmpdir() as d:
        p = _fifo(d)
        _raises(ValueError, [p, "FIFO"], lambda: qc.files.read_header(p))


@case
def case_fifo_gguf():
    """quantcore.gguf.load and load_metadata on a FIFO: ValueError naming it."""
    from quantcore import gguf as qg
    with _tmpdir() as d:
        p = _fifo(d)
        _raises(ValueError, [p, "FIFO"], lambda: qg.load(p))
        _raises(ValueError, [p, "FIFO"], lambda: qg.load_metadata(p))


@case
def case_fifo_symlink_load():
    """A symlink to a FIFO is read through and refused the same way."""
    import quantcore as qc
    with _tmpdir() as d:
        p = _fifo(d)
        link = os.path.join(d, "link.safetensors")
        os.symlink(p, link)
        _raises(ValueError, [link, "FIFO"], lambda: qc.load(link))


@case
def case_fifo_cli_inspect():
    """`quantcore inspect FIFO` (mkfifo f; quantcore inspect f): one-line error, no hang."""
    with _tmpdir() as d:
        p = _fifo(d)
        _one_line_error(_cli_sub("inspect", p), p, "FIFO")


@case
def case_fifo_cli_quantize():
    """`quantcore quantize FIFO -o OUT`: one-line error naming the FIFO, no hang, no output."""
    with _tmpdir() as d:
        p = _fifo(d)
        out = os.path.join(d, "out.safetensors")
        _one_line_error(_cli_sub("quantize", p, "-o", out, "--no-progress"), p, "FIFO")
        assert not os.path.exists(out)
        _no_temps(d)


@case
def case_dev_zero_load():
    """quantcore.load('/dev/zero'): ValueError "a character device" (no "-8 after the length")."""
    import quantcore as qc
    before = _char_device("/dev/zero")
    _raises(ValueError, ["/dev/zero", "character device"], lambda: qc.load("/dev/zero"),
            forbid=(TMP_MARK, "-8"))
    _raises(ValueError, ["/dev/zero", "character device"], lambda: qc.files.read_header("/dev/zero"))
    from quantcore import gguf as qg
    _raises(ValueError, ["/dev/zero", "character device"], lambda: qg.load("/dev/zero"))
    assert _char_device("/dev/zero") == before


@case
def case_dev_zero_cli_inspect():
    """`quantcore inspect /dev/zero`: one-line error naming the character device."""
    before = _char_device("/dev/zero")
    _one_line_error(_cli("inspect", "/dev/zero"), "/dev/zero", "character device")
    assert _char_device("/dev/zero") == before


@case
def case_directory_readers():
    """A directory given to load, read_header, gguf.load, `inspect`: ValueError naming it."""
    import quantcore as qc
    from quantcore import gguf as qg
    with _tmpdir() as d:
        for fn in (qc.load, qc.files.read_header, qg.load, qg.load_metadata):
            _raises(ValueError, [d, "directory"], lambda: fn(d))
        _one_line_error(_cli("inspect", d), d, "directory")


@case
def case_missing_input_reads_the_same():
    """A missing input: "<path>: no such file" from `quantize` and `inspect` alike (and the API)."""
    import quantcore as qc
    with _tmpdir() as d:
        p = os.path.join(d, "absent.safetensors")
        a = _one_line_error(_cli("quantize", p, "-o", os.path.join(d, "o.safetensors")),
                            p, "no such file")
        b = _one_line_error(_cli("inspect", p), p, "no such file")
        assert a.split(" error: ", 1)[1] == b.split(" error: ", 1)[1], (a, b)
        _raises(FileNotFoundError, [p, "no such file"], lambda: qc.load(p))
        _raises(FileNotFoundError, [p, "no such file"], lambda: qc.files.read_header(p))


# ---- writers: never the input, never a special file, never half a file ----------------------

@case
def case_cli_output_is_input():
    """`quantize in -o in`: refused before any work; the float model is unchanged."""
    with _tmpdir() as d:
        p = _model_file(d)
        before = _read(p)
        _one_line_error(_cli("quantize", p, "-o", p, "--no-progress"), p, "input")
        assert _read(p) == before
        _no_temps(d)


@case
def case_cli_output_links_to_input():
    """`-o` a hard link or a symlink to the input (same inode): refused, input unchanged."""
    with _tmpdir() as d:
        p = _model_file(d)
        before = _read(p)
        hard, soft = os.path.join(d, "hard.safetensors"), os.path.join(d, "soft.safetensors")
        os.link(p, hard)
        os.symlink(p, soft)
        for out in (hard, soft):
            _one_line_error(_cli("quantize", p, "-o", out, "--no-progress"), out, "input")
        assert _read(p) == before and os.path.islink(soft)
        _no_temps(d)


@case
def case_cli_output_dev_null():
    """`-o /dev/null`: refused; /dev/null stays the same character device."""
    before = _char_device("/dev/null")
    with _tmpdir() as d, _dev_guard():
        p = _model_file(d)
        _one_line_error(_cli("quantize", p, "-o", "/dev/null", "--no-progress"),
                        "/dev/null", "character device")
        _no_temps(d)
    assert _char_device("/dev/null") == before


@case
def case_api_output_dev_null():
    """quantcore.save and gguf.save to /dev/null: ValueError; /dev/null unchanged."""
    import quantcore as qc
    before = _char_device("/dev/null")
    with _dev_guard():
        _raises(ValueError, ["/dev/null", "character device"],
                lambda: qc.save("/dev/null", _weights()))
        try:
            import gguf  # noqa: F401
        except ImportError:
            pass
        else:
            from quantcore import gguf as qg
            _raises(ValueError, ["/dev/null", "character device"],
                    lambda: qg.save("/dev/null", {"w": np.ones((2, 32), np.float32)}))
    assert _char_device("/dev/null") == before


@case
def case_bench_json_output():
    """`quantcore bench --json` to /dev/null or a directory: refused before the benchmark
    runs; to a new file: written with the umask's mode, no temporary left."""
    before = _char_device("/dev/null")
    tiny = ("bench", "--quick", "--repeats", "1", "--shapes", "64x256", "--ops", "quantize",
            "--configs", "int8", "--no-targets")
    with _tmpdir() as d, _dev_guard():
        _one_line_error(_cli(*tiny, "--json", "/dev/null"), "/dev/null", "character device")
        _one_line_error(_cli(*tiny, "--json", d), d, "directory")
        out = os.path.join(d, "bench.json")
        old = os.umask(0o022)
        try:
            rc, err, _ = _cli(*tiny, "--json", out)
        finally:
            os.umask(old)
        assert rc == 0, err
        assert json.loads(_read(out)) and stat.S_IMODE(os.stat(out).st_mode) == 0o644
        _no_temps(d)
    assert _char_device("/dev/null") == before


@case
def case_output_own_device_node():
    """-o a character device node of our own (mknod, same as /dev/null): refused, node kept."""
    import quantcore as qc
    with _tmpdir() as d:
        node = os.path.join(d, "null")
        try:
            os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        except (AttributeError, OSError) as e:
            raise Skip(f"cannot make a device node here (needs CAP_MKNOD): {e}") from None
        before = _char_device(node)
        _raises(ValueError, [node, "character device"], lambda: qc.save(node, _weights()))
        p = _model_file(d)
        _one_line_error(_cli("quantize", p, "-o", node, "--no-progress"), node, "character device")
        assert _char_device(node) == before
        _no_temps(d)


@case
def case_output_fifo():
    """-o a FIFO (API and CLI): refused without opening it (no hang); it stays a FIFO."""
    import quantcore as qc
    with _tmpdir() as d:
        f = _fifo(d)
        _raises(ValueError, [f, "FIFO"], lambda: qc.save(f, _weights()))
        p = _model_file(d)
        _one_line_error(_cli("quantize", p, "-o", f, "--no-progress"), f, "FIFO")
        assert stat.S_ISFIFO(os.lstat(f).st_mode)
        _no_temps(d)


@case
def case_output_directory():
    """-o a directory (save, gguf.save, CLI): ValueError naming it; it is untouched."""
    import quantcore as qc
    with _tmpdir() as d:
        sub = os.path.join(d, "sub")
        os.mkdir(sub)
        _raises(ValueError, [sub, "directory"], lambda: qc.save(sub, _weights()))
        p = _model_file(d)
        _one_line_error(_cli("quantize", p, "-o", sub, "--no-progress"), sub, "directory")
        try:
            import gguf  # noqa: F401
        except ImportError:
            pass
        else:
            from quantcore import gguf as qg
            _raises(ValueError, [sub, "directory"],
                    lambda: qg.save(sub, {"w": np.ones((2, 32), np.float32)}))
        assert os.path.isdir(sub) and os.listdir(sub) == []
        _no_temps(d)


@case
def case_output_symlink_followed():
    """-o a symlink: the file it points to is replaced, the link stays a link."""
    import quantcore as qc
    with _tmpdir() as d:
        real_dir = os.path.join(d, "real")
        os.mkdir(real_dir)
        target = _model_file(real_dir, "target.safetensors")
        link = os.path.join(d, "link.safetensors")
        os.symlink(target, link)
        src = _model_file(d, "src.safetensors")
        rc, err, _ = _cli("quantize", src, "-o", link, "--no-progress")
        assert rc == 0, err
        assert os.path.islink(link) and os.readlink(link) == target
        assert isinstance(qc.load(target)["layer.w"], qc.QuantizedTensor)
        qc.save(link, {"x": np.arange(3, dtype=np.int64)})
        assert list(qc.load(target)) == ["x"] and os.path.islink(link)
        _no_temps(d, real_dir)


@case
def case_output_dangling_symlink():
    """-o a symlink to nothing (or a loop): refused; nothing is created."""
    import quantcore as qc
    with _tmpdir() as d:
        link = os.path.join(d, "dangling.safetensors")
        os.symlink(os.path.join(d, "nowhere"), link)
        _raises(ValueError, [link, "symbolic link", "does not exist"],
                lambda: qc.save(link, _weights()))
        loop = os.path.join(d, "loop")
        os.symlink(loop, loop)
        _raises(OSError, [loop], lambda: qc.save(loop, _weights()))
        assert _listing(d) == ["dangling.safetensors", "loop"]


@case
def case_output_read_only():
    """An existing read-only target (mode 0444, also for root): PermissionError, file unchanged."""
    import quantcore as qc
    with _tmpdir() as d:
        p = _model_file(d, "ro.safetensors")
        os.chmod(p, 0o444)
        before = _read(p)
        _raises(PermissionError, [p, "read-only"], lambda: qc.save(p, {"x": np.ones(2)}))
        src = _model_file(d, "src.safetensors")
        _one_line_error(_cli("quantize", src, "-o", p, "--no-progress"), p, "read-only")
        assert _read(p) == before and stat.S_IMODE(os.stat(p).st_mode) == 0o444
        _no_temps(d)


@case
def case_output_missing_directory():
    """An output in a directory that does not exist: FileNotFoundError naming the path."""
    import quantcore as qc
    with _tmpdir() as d:
        p = os.path.join(d, "no", "such", "x.safetensors")
        _raises(FileNotFoundError, [p, "does not exist"], lambda: qc.save(p, _weights()))


@case
def case_umask_honoured():
    """New files get 0666 less the umask (not 0600); a replaced file keeps its mode (and,
    for root, its owner and group)."""
    import quantcore as qc
    with _tmpdir() as d:
        old = os.umask(0o022)
        try:
            for mask in (0o022, 0o002, 0o077, 0o027):
                os.umask(mask)
                p = os.path.join(d, f"new{mask:03o}.safetensors")
                qc.save(p, _weights())
                got = stat.S_IMODE(os.stat(p).st_mode)
                assert got == 0o666 & ~mask, f"umask {mask:03o}: mode {got:03o}"
            os.umask(0o022)
            p = os.path.join(d, "kept.safetensors")
            qc.save(p, _weights())
            os.chmod(p, 0o640)
            qc.save(p, {"x": np.ones(2)})
            assert stat.S_IMODE(os.stat(p).st_mode) == 0o640
            if os.geteuid() == 0:  # root may keep another user's file theirs
                os.chown(p, 4321, 4322)
                qc.save(p, {"y": np.ones(2)})
                st = os.stat(p)
                assert (st.st_uid, st.st_gid) == (4321, 4322) and stat.S_IMODE(st.st_mode) == 0o640
        finally:
            os.umask(old)
        _no_temps(d)


@case
def case_umask_cli_and_gguf():
    """`quantcore quantize` under umask 027 writes 0640; gguf.save under umask 002 writes 0664."""
    with _tmpdir() as d:
        src = _model_file(d)
        out = os.path.join(d, "out.safetensors")
        rc, err, _ = _cli_sub("quantize", src, "-o", out, "--no-progress",
                              preexec=lambda: os.umask(0o027))
        assert rc == 0, err
        assert stat.S_IMODE(os.stat(out).st_mode) == 0o640
        _need_gguf()
        old = os.umask(0o002)
        try:
            p = _gguf_file(d)
        finally:
            os.umask(old)
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o664


@case
def case_exception_mid_write():
    """An exception (and a KeyboardInterrupt) half-way through writing a safetensors file:
    it propagates, the old file is intact, no temporary file is left."""
    import quantcore as qc
    import quantcore.files as qf
    with _tmpdir() as d:
        p = _model_file(d, "x.safetensors")
        before, names = _read(p), _listing(d)
        real = qf._write_safetensors
        for exc in (RuntimeError("boom in the middle"), KeyboardInterrupt("interrupted")):
            def half(f, header, arrays, exc=exc):
                f.write(header)
                f.write(b"\0" * 100)
                f.flush()
                raise exc
            qf._write_safetensors = half
            try:
                _raises(type(exc), [], lambda: qc.save(p, {"y": np.ones((64, 64), np.float32)}))
            finally:
                qf._write_safetensors = real
            assert _read(p) == before and _listing(d) == names
        # and the same for a new file: nothing is created
        q = os.path.join(d, "new.safetensors")

        def fail(f, header, arrays):
            f.write(header)
            raise RuntimeError("boom")

        qf._write_safetensors = fail
        try:
            _raises(RuntimeError, ["boom"], lambda: qc.save(q, _weights()))
        finally:
            qf._write_safetensors = real
        assert _listing(d) == names


@case
def case_exception_mid_write_gguf():
    """An exception half-way through gguf.save: the old GGUF file is intact, no temporary left."""
    _need_gguf()
    import gguf
    from quantcore import gguf as qg
    with _tmpdir() as d:
        p = _gguf_file(d)
        before, names = _read(p), _listing(d)
        real = gguf.GGUFWriter.write_tensors_to_file

        def half(self, *a, **kw):
            self.fout[0].write(b"\0" * 100)
            self.fout[0].flush()
            raise RuntimeError("boom in the middle")

        gguf.GGUFWriter.write_tensors_to_file = half
        try:
            _raises(RuntimeError, ["boom"], lambda: qg.save(p, {"v": np.zeros((4, 32), np.float32)}))
        finally:
            gguf.GGUFWriter.write_tensors_to_file = real
        assert _read(p) == before and _listing(d) == names


def _full_disk():
    """In a child before exec: files may not grow past 64 KiB (EFBIG, like a full disk)."""
    import resource
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, hard))


@case
def case_disk_full_api():
    """A write that fails half-way (file size limit, as a full disk): OSError naming the
    user's path, not the temporary file; the old file intact; nothing left behind."""
    with _tmpdir() as d:
        p = _model_file(d, "x.safetensors")
        before, names = _read(p), _listing(d)
        code = ("import sys, numpy as np, quantcore as qc\n"
                "qc.save(sys.argv[1], {'w': np.zeros((512, 512), np.float32)})\n")
        r = subprocess.run([sys.executable, "-c", code, p], capture_output=True, text=True,
                           timeout=SUBPROCESS_SECONDS, cwd=REPO, preexec_fn=_full_disk)
        assert r.returncode != 0, "a 1 MiB file was written under a 64 KiB limit"
        last = r.stderr.strip().splitlines()[-1]
        assert last.startswith("OSError") and p in last and TMP_MARK not in last, last
        assert _read(p) == before and _listing(d) == names


@case
def case_disk_full_cli():
    """`quantcore quantize` when the disk fills: a one-line error naming -o's path (not a
    temporary file); an existing output is intact; nothing left behind."""
    with _tmpdir() as d:
        src = _model_file(d, rows=256, cols=1024)  # about 160 KiB quantized
        out = _model_file(d, "out.safetensors")
        before, names = _read(out), _listing(d)
        _one_line_error(_cli_sub("quantize", src, "-o", out, "--no-progress", preexec=_full_disk),
                        out, "too large")
        assert _read(out) == before and _listing(d) == names


@case
def case_bad_save_keeps_file():
    """quantcore.save with tensors it cannot store: the error comes before the existing
    file is touched."""
    import quantcore as qc
    with _tmpdir() as d:
        p = _model_file(d, "x.safetensors")
        before = _read(p)
        _raises(TypeError, ["'o'"], lambda: qc.save(p, {"o": np.array(["a"], object)}))
        _raises(ValueError, ["not valid UTF-8"], lambda: qc.save(p, {"\ud800": np.ones(2)}))
        assert _read(p) == before
        _no_temps(d)


@case
def case_gguf_bad_metadata_keeps_file():
    """gguf.save with metadata its type cannot hold (int beyond UINT32, int typed STRING,
    int beyond INT64, float beyond FLOAT32, mixed or empty lists, a bad arch): ValueError or
    TypeError naming the key, raised before any file is opened; a good file keeps its bytes."""
    _need_gguf()
    from gguf import GGUFValueType as VT
    from quantcore import gguf as qg
    with _tmpdir() as d:
        p = _gguf_file(d)
        before, names = _read(p), _listing(d)
        x = {"w": np.zeros((2, 32), np.float32)}
        bad = [({"k.big": (2**40, VT.UINT32)}, ValueError, ["k.big", "UINT32"]),
               ({"k.neg": (-1, VT.UINT32)}, ValueError, ["k.neg", "UINT32"]),
               ({"k.str": (5, VT.STRING)}, TypeError, ["k.str", "STRING"]),
               ({"k.i64": 2**64}, ValueError, ["k.i64", "INT64"]),
               ({"k.f": 1e300}, ValueError, ["k.f", "FLOAT32"]),
               ({"k.mixed": [1, "a"]}, TypeError, ["k.mixed"]),
               ({"k.empty": []}, ValueError, ["k.empty", "empty"]),
               ({"k.obj": object()}, TypeError, ["k.obj"]),
               ({"k.nested": [[1, 2], [2**40]]}, ValueError, ["k.nested", "INT32"]),
               ({"k.bool": ("yes", VT.BOOL)}, TypeError, ["k.bool", "BOOL"])]
        for md, exc, words in bad:
            _raises(exc, words, lambda: qg.save(p, x, metadata=md))
            new = os.path.join(d, "new.gguf")
            _raises(exc, words, lambda: qg.save(new, x, metadata=md))
        _raises(TypeError, ["arch"], lambda: qg.save(p, x, arch=[]))
        assert _read(p) == before and _listing(d) == names
        assert qg.load_metadata(p)["m.s"] == "kept"
        # what does fit is written as its type says
        qg.save(p, x, metadata={"k.u64": (2**64 - 1, VT.UINT64), "k.ints": [1, 2**40]})
        meta = qg.load_metadata(p)
        assert meta["k.u64"] == 2**64 - 1 and meta["k.ints"].tolist() == [1, 2**40]


# ---- clear errors --------------------------------------------------------------------------

@case
def case_config_field_types():
    """QuantConfig(format=[]) and every named field of a wrong type: ValueError naming the
    field (not "unhashable type: 'list'")."""
    from quantcore import QuantConfig
    for field in ("format", "method", "compute", "granularity", "scale_dtype"):
        for value in ([], {}, b"x", 3.5):
            _raises(ValueError, [field], lambda: QuantConfig(**{field: value}),
                    forbid=("unhashable",))
    _raises(ValueError, ["format"], lambda: QuantConfig.from_dict({"format": []}),
            forbid=("unhashable",))


@case
def case_config_field_types_from_file():
    """A file whose config has "format": [] (or "method": {}): ValueError naming the file,
    the tensor and the field."""
    import quantcore as qc
    with _tmpdir() as d:
        for field, value in (("format", []), ("method", {}), ("compute", 1)):
            p = os.path.join(d, f"{field}.safetensors")
            qc.save(p, {"w": qc.quantize(_weights()["layer.w"], qc.QuantConfig.int4())})

            def edit(meta, field=field, value=value):
                meta["tensors"]["w"]["config"][field] = value
            _edit_quantcore_meta(p, edit)
            _raises(ValueError, [p, "'w'", field], lambda: qc.load(p), forbid=("unhashable",))
            _one_line_error(_cli("inspect", p), p, field)


@case
def case_metrics_huge_counts():
    """n_parameters of 10**400 or 2**63 (API or file): ValueError naming the field (or the
    file's digits); 2**63 - 1 loads and str(model.metrics) works."""
    import quantcore as qc
    from quantcore import CompressionMetrics, ModelCompressionMetrics
    _raises(ValueError, ["n_parameters"], lambda: CompressionMetrics.from_dict({"n_parameters": 10**400}))
    _raises(ValueError, ["n_parameters"], lambda: CompressionMetrics(n_parameters=2**63))
    _raises(ValueError, ["original_bits_per_param"],
            lambda: CompressionMetrics(original_bits_per_param=10**400))
    _raises(ValueError, ["n_parameters"], lambda: ModelCompressionMetrics.from_dict(
        {"layers": {"a": {"n_parameters": 10**400}}}))
    with _tmpdir() as d:
        model = qc.quantize_model(_weights(), progress=False)
        for n, words in ((10**400, ["digits"]), (2**63, ["n_parameters"]), (2**63 - 1, None)):
            p = os.path.join(d, "m.safetensors")
            qc.save(p, model)

            def edit(meta, n=n):
                meta["metrics"]["layers"]["layer.w"]["n_parameters"] = n
            _edit_quantcore_meta(p, edit)
            if words is None:
                m = qc.load(p).metrics
                assert m is not None and "9,223,372,036,854,775,807" in str(m)
                m.to_markdown()
                repr(m)
            else:
                _raises(ValueError, [p] + words, lambda: qc.load(p))


@case
def case_header_5000_digit_integer():
    """A safetensors header (or the quantcore JSON) with a 5000-digit integer: ValueError
    naming the file and the digits, not Python's digit-limit message."""
    import quantcore as qc
    with _tmpdir() as d:
        p = os.path.join(d, "digits.safetensors")
        head = b'{"w":{"dtype":"U8","shape":[4],"data_offsets":[0,' + b"9" * 5000 + b"]}}"
        with open(p, "wb") as f:
            f.write(_safetensors(head, b"\0" * 4))
        _raises(ValueError, [p, "5000 digits"], lambda: qc.load(p),
                forbid=("set_int_max_str_digits", "Exceeds the limit"))
        _one_line_error(_cli("inspect", p), p, "digits")
        q = os.path.join(d, "meta.safetensors")
        meta = '{"version":1,"order":["w"],"tensors":{},"n":' + "7" * 5000 + "}"
        head = json.dumps({"__metadata__": {"quantcore": meta},
                           "w": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}}).encode()
        with open(q, "wb") as f:
            f.write(_safetensors(head, b"\0" * 4))
        _raises(ValueError, [q, "digits"], lambda: qc.load(q), forbid=("set_int_max_str_digits",))


@case
def case_float64_beyond_float32():
    """qc.quantize(np.array([[1e300, 1.0]])): ValueError saying the value does not fit float32,
    naming the argument (not "NaN or Inf"); a real NaN is still called NaN."""
    import quantcore as qc
    _raises(ValueError, ["array", "1e+300", "float32", "row 0, column 0"],
            lambda: qc.quantize(np.array([[1e300, 1.0]])), forbid=("NaN",))
    _raises(ValueError, ["array", "float32", "row 1, column 2"],
            lambda: qc.quantize(np.array([[1.0, 2.0, 3.0], [1.0, 2.0, -1e39]]),
                                qc.QuantConfig.int4(group_size=16)), forbid=("NaN",))
    _raises(ValueError, ["weight", "float32"], lambda: qc.QuantizedLinear.from_linear(
        np.full((2, 32), 1e300)), forbid=("NaN",))
    _raises(ValueError, ["NaN or Inf"], lambda: qc.quantize(np.array([[np.nan, 1e300]])))
    # float32's largest value itself still quantizes
    qc.quantize(np.array([[float(np.finfo(np.float32).max), 1.0]]))


@case
def case_sparse_terabyte_safetensors():
    """A sparse safetensors file declaring a 1 TiB tensor (or more than twice this machine's
    memory): load raises ValueError saying it needs more memory than the machine has, before
    allocating; read_header (inspect) still reads it."""
    import quantcore as qc
    n = _huge()
    with _tmpdir() as d:
        p = os.path.join(d, "huge.safetensors")
        head = json.dumps({"big": {"dtype": "U8", "shape": [n], "data_offsets": [0, n]}}).encode()
        _sparse(p, _safetensors(head), 8 + len(head) + n)
        _raises(ValueError, [p, "memory", "more than this machine has"], lambda: qc.load(p),
                forbid=("MemoryError", "Unable to allocate"))
        assert qc.files.read_header(p).entries["big"].end == n
        rc, err, out = _cli("inspect", p)
        assert rc == 0, err
        _one_line_error(_cli("inspect", p, "--verify"), p, "memory")


@case
def case_sparse_terabyte_gguf():
    """The same for a GGUF file declaring a 1 TiB I8 tensor: ValueError, not MemoryError."""
    from quantcore import gguf as qg
    n = _huge()
    with _tmpdir() as d:
        p = os.path.join(d, "huge.gguf")
        name = b"big"
        head = (b"GGUF" + struct.pack("<IQQ", 3, 1, 0) + struct.pack("<Q", len(name)) + name
                + struct.pack("<IQIQ", 1, n, 24, 0))
        head += b"\0" * (-len(head) % 32)
        _sparse(p, head, len(head) + n)
        assert qg.load_metadata(p) == {}
        _raises(ValueError, [p, "memory", "more than this machine has"], lambda: qg.load(p),
                forbid=("MemoryError", "Unable to allocate"))


# ---- the runner ----------------------------------------------------------------------------

def _timed(fn: Callable[[], None]) -> Callable[[], None]:
    def run():
        with _deadline(CASE_SECONDS):
            fn()
    return run


def child_cases():
    """For tests/caserunner.py: the callables by name, each under the alarm."""
    return {name: _timed(fn) for name, fn in CASES.items()}


@pytest.fixture(scope="module")
def outcomes():
    if not hasattr(signal, "SIGALRM") or not hasattr(os, "mkfifo"):
        pytest.skip("needs POSIX (SIGALRM, FIFOs)")
    # the parent's timeout only backs up the alarm of each case
    return run_cases("test_hostile_files", list(CASES), timeout=CASE_SECONDS * len(CASES))


def test_every_case_has_a_description():
    for name, fn in CASES.items():
        assert fn.__doc__ and fn.__doc__.strip(), name


@pytest.mark.parametrize("name", list(CASES))
def test_hostile(name, outcomes):
    res = outcomes[name]
    if res["status"] == "skip":
        pytest.skip(res["msg"])
    assert res["status"] == "ok", (f"{name} ({CASES[name].__doc__.strip()}): {res['status']} "
                                   f"{res.get('type') or ''}: {res['msg']}")
