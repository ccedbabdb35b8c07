"""What ``quantcore bench`` prints and writes: a table per case that fits a
100-column terminal (columns only for the peers that are installed, their
labels explained once in a legend), the JSON document and the plot."""

from __future__ import annotations

import datetime as _dt
import math
import os
import textwrap
from typing import Dict, List, Optional, Sequence, Set

import numpy as np

from .. import _io
from .._version import __version__
from ..runtime import info
from . import CASES, BenchError, Case, Result, format_shape
from .machine import host
from .peers import PEERS, gguf_module, installed

__all__ = ["Table", "LoadTable", "legend", "format_tables", "to_json", "plot_speedups", "WIDTH"]

WIDTH = 100  # the report's lines fit a terminal this wide


def _fmt(x: Optional[float], spec: str, missing: str = "-") -> str:
    return missing if x is None or not math.isfinite(x) else format(x, spec)


def _fmt_ms(ms: Optional[float]) -> str:
    if ms is None or not math.isfinite(ms):
        return "-"
    return f"{ms:.3f}" if ms < 1 else f"{ms:.2f}" if ms < 100 else f"{ms:.0f}"


def _fmt_x(v: float) -> str:
    if not math.isfinite(v):
        return "-"
    return f"{v:.2f}x" if v < 10 else f"{v:.1f}x" if v < 100 else f"{v:.0f}x"


class Table:
    """One case's table, printed row by row as rows are measured.  `peers` are
    the case's peers that get a column (those installed)."""

    def __init__(self, case: Case, peers: Sequence[str]):
        self.case = case
        self.peers = [p for p in case.peers if p in peers]
        cols = [("config", 8, "<")]
        cols += [("M", 4, ">")] if case.mkn else [("shape", 11, "<")]
        cols += [("ms", 8, ">"), ("GB/s", 6, ">")]
        if case.mweights:
            cols.append(("Mw/s", 6, ">"))
        if case.show_bw:
            cols.append(("%bw", 5, ">"))
        if case.flops:
            cols.append(("GFLOP/s", 7, ">"))
        for p in self.peers:
            if case.peer_ms:
                cols.append((f"{PEERS[p].label} ms", 8, ">"))
            cols.append((PEERS[p].label, 6, ">"))
        self.exact = case.exact_peer if case.exact_peer in self.peers else None
        if self.exact:
            cols.append((f"{PEERS[self.exact].label}=", 5, ">"))
        self.cols = cols
        self._group: Optional[tuple] = None
        self.above_probe: List[Result] = []   # rows faster than their read probe
        self.unavailable: Dict[str, str] = {}  # config -> why quantcore has no kernel ("n/a")

    def _line(self, cells: Sequence[str]) -> str:
        return "  ".join(format(c, f"{a}{w}") for c, (_, w, a) in zip(cells, self.cols)).rstrip()

    def header(self) -> str:
        """The title (what is timed, what GB/s counts) and the column heads."""
        c = self.case
        title = f"{c.op}: {c.what}" if c.what else c.op
        if c.bytes_label:
            title += f"; {c.bytes_label}"
        head = self._line([name for name, _, _ in self.cols])
        return "\n".join(textwrap.wrap(title, WIDTH) + [head, "-" * len(head)])

    def _lead(self, r: Result, lines: List[str]) -> List[str]:
        cells = [r.config]
        if self.case.mkn:
            m, k, n = r.shape
            if self._group != (k, n):
                self._group = (k, n)
                lines.append(f"K={k} N={n}")
            cells.append(str(m))
        else:
            cells.append(format_shape(r.shape))
        return cells

    def row(self, r: Result) -> str:
        """The line(s) for one result (a K, N subheading first where it changes)."""
        lines: List[str] = []
        cells = self._lead(r, lines)
        if r.timing is None:
            self.unavailable.setdefault(r.config, r.unavailable)
        cells += ["n/a" if r.timing is None else _fmt_ms(r.ms),
                  _fmt(r.gbps, ".2f" if r.gbps < 100 else ".0f")]
        if self.case.mweights:
            cells.append(_fmt(r.mweights, ".1f" if r.mweights < 100 else ".0f"))
        if self.case.show_bw:
            frac = r.bandwidth_fraction
            if not math.isfinite(frac):
                cells.append("-")
            elif frac > 1.0:
                self.above_probe.append(r)
                cells.append(f"{100 * frac:.0f}%*")
            else:
                cells.append(f"{100 * frac:.0f}%")
        if self.case.flops:
            cells.append(_fmt(r.gflops, ".1f"))
        for p in self.peers:
            info_ = r.peers.get(p, {})
            t = info_.get("timing")
            if self.case.peer_ms:
                cells.append("-" if t is None else _fmt_ms(t.median * 1e3))
            cells.append("-" if t is None else _fmt_x(r.speedup(p)))
        if self.exact:
            ok = r.checks.get(f"{self.exact}_bit_exact")
            cells.append("-" if ok is None else "yes" if ok else "NO")
        lines.append(self._line(cells))
        return "\n".join(lines)

    def footnote(self, llc: int) -> str:
        """Why a %bw above 100% can happen, for the rows that show one, and why a
        row shows n/a ("" when neither)."""
        out = ""
        if self.unavailable:
            why = next(iter(self.unavailable.values()))
            out = textwrap.fill(f"n/a: quantcore has no {self.case.op} kernel for "
                                f"{', '.join(self.unavailable)} in this build ({why})", WIDTH,
                                subsequent_indent="  ")
        bw = self._bw_footnote(llc)
        return "\n".join(x for x in (out, bw) if x)

    def _bw_footnote(self, llc: int) -> str:
        if not self.above_probe:
            return ""
        cached = all(r.checks.get("cache_resident") for r in self.above_probe)
        why = ("their layer copies fit in the caches, where the probe's plain loads fall "
               "behind the kernels' SIMD loads" if cached else
               "the probe and the row are timed apart, and other work on the machine shifts "
               "either one")
        text = (f"* above 100%: faster than the read probe over the same bytes ({why}; "
                f"last-level cache {llc >> 20} MiB)")
        return "\n".join(textwrap.wrap(text, WIDTH))


def _fmt_ms3(ms: Optional[float]) -> str:
    """Milliseconds in at most 4 characters: 0.123, 2.58, 25.8, 258, 2580."""
    if ms is None or not math.isfinite(ms):
        return "-"
    return f"{ms:.3f}" if ms < 1 else f"{ms:.2f}" if ms < 10 else f"{ms:.1f}" if ms < 100 \
        else f"{ms:.0f}"


def _short(ms: float) -> str:
    """:func:`_fmt_ms3` without the leading zero below 1 ms (.012), for median/p90 cells."""
    text = _fmt_ms3(ms)
    return text[1:] if text.startswith("0.") else text


class LoadTable(Table):
    """A case's table under ``--load``: quantcore's median and p90 with one core
    busy, its quiet 1-thread median and the ratio p90 / quiet 1-thread median,
    then each peer's median/p90 under the same load (milliseconds)."""

    def __init__(self, case: Case, peers: Sequence[str]):
        super().__init__(case, peers)
        cols = [("config", 8, "<")]
        cols += [("M", 3, ">")] if case.mkn else [("shape", 11, "<")]
        cols += [("ms", 6, ">"), ("p90", 6, ">"), ("1t", 6, ">"), ("p90/1t", 6, ">")]
        cols += [(f"{PEERS[p].label} ms", 9, ">") for p in self.peers]
        self.cols = cols
        self.exact = None

    def header(self) -> str:
        """The title and the column heads."""
        c = self.case
        title = (f"{c.op} with one core busy: {c.what}; ms = median, p90 = 90th percentile of "
                 f"single calls; peers: median/p90 ms")
        head = self._line([name for name, _, _ in self.cols])
        return "\n".join(textwrap.wrap(title, WIDTH) + [head, "-" * len(head)])

    def row(self, r: Result) -> str:
        """The line(s) for one result measured under load."""
        lines: List[str] = []
        cells = self._lead(r, lines)
        if r.timing is None:
            self.unavailable.setdefault(r.config, r.unavailable)
            cells += ["n/a", "-", "-", "-"]
        else:
            q1 = r.quiet_1t.median * 1e3 if r.quiet_1t is not None else None
            cells += [_fmt_ms3(r.ms), _fmt_ms3(r.p90_ms), _fmt_ms3(q1),
                      _fmt(r.p90_over_quiet_1t, ".2f") + ("x" if r.quiet_1t is not None else "")]
        for p in self.peers:
            t = r.peers.get(p, {}).get("timing")
            cells.append("-" if t is None else
                         f"{_short(t.median * 1e3)}/{_short((t.p90 or t.median) * 1e3)}")
        lines.append(self._line(cells))
        return "\n".join(lines)


def legend(tables: Sequence[Table], threads: int, blas_pinned: bool, load: bool = False) -> str:
    """The lines under the tables: what the ratios mean, each peer label, the
    %bw and bit-exactness columns, the thread counts, the peers not installed."""
    used: List[str] = []
    for t in tables:
        used += [p for p in t.peers if p not in used]
    if load:
        parts = ["ms, p90: quantcore's median and 90th percentile over single calls with another "
                 "process spinning on one core; 1t: quantcore's median on 1 thread, timed just "
                 "before without that process; p90/1t: the first over the second; a peer's cell: "
                 "its median/p90 under the same load; -: no such peer for that row"]
    else:
        parts = ["Nx: peer time / quantcore time, same input, same run (above 1x: quantcore is "
                 "faster); -: no such peer for that row"]
    if any(t.case.peer_ms for t in tables) and not load:
        parts.append("'<peer> ms': the peer's median time")
    if any(t.unavailable for t in tables):
        parts.append("n/a: quantcore cannot run that row (the footnote says why); its peers are "
                     "timed all the same")
    if any(t.case.mweights for t in tables):
        parts.append("Mw/s: million weights quantized per second")
    if used:
        parts.append("; ".join(f"{PEERS[p].label} = {PEERS[p].description}" for p in used))
    if any(t.case.show_bw for t in tables) and not load:
        parts.append("%bw: GB/s against a read of the same bytes by quantcore's threads, "
                     "through the same number of copies, timed the same way")
    for t in tables:
        if t.exact == "ggml":
            parts.append("ggml=: quantcore's K-quant bytes equal ggml_quantize_chunk's")
        elif t.exact:
            parts.append(f"{PEERS[t.exact].label}=: dequantize(quantize(w)) is bit-identical to "
                         f"{PEERS[t.exact].label}'s")
    ops = {t.case.op for t in tables}
    thr = f"{threads} thread{'s' if threads != 1 else ''}"
    if ops & {"quantize", "dequantize"}:
        parts.append("quantize, dequantize: NumPy and gguf run on one thread, quantcore on " + thr)
    if "linear" in ops:
        parts.append(f"linear: every peer at {thr}, like quantcore" +
                     ("" if blas_pinned else " (NumPy's BLAS not pinned: threadpoolctl "
                                             "is not installed)") +
                     ("; naive is not timed under --load" if load else ""))
    if "kquant" in ops:
        parts.append(f"kquant: ggml at {thr} on its own thread pool, the same weight bytes "
                     f"(from ggml_quantize_chunk when ggml is installed)")
    if "kquantize" in ops:
        parts.append("kquantize: quantcore and ggml on one thread")
    missing: Dict[str, List[str]] = {}
    for t in tables:
        for p in t.case.peers:
            if (p not in t.peers and PEERS[p].install and
                    PEERS[p].label not in missing.setdefault(PEERS[p].install, [])):
                missing[PEERS[p].install].append(PEERS[p].label)
    missing = {hint: labels for hint, labels in missing.items() if labels}
    if missing:
        extra = any(PEERS[p].in_bench_extra for t in tables for p in t.case.peers
                    if p not in t.peers and PEERS[p].install)
        parts.append("not measured: " + "; ".join(f"{', '.join(labels)} ({hint})"
                                                  for hint, labels in missing.items()) +
                     ("; or pip install 'quantcore[bench]'" if extra else ""))
    out: List[str] = []
    for p in parts:
        out += textwrap.wrap(p, WIDTH, subsequent_indent="  ")
    return "\n".join(out)


def present_peers(ops: Sequence[str]) -> Set[str]:
    """The peers of `ops` whose packages are installed."""
    return {p for op in ops for p in CASES[op].peers if installed(p)}


def format_tables(results: Sequence[Result]) -> str:
    """The report tables of `results`, one per op, as text (with the legend);
    rows measured under ``--load`` get the load tables."""
    parts, tables = [], []
    ops = [op for op in CASES if any(r.op == op for r in results)]
    peers = present_peers(ops)
    load = any(r.load for r in results)
    if load:  # peers left out under load (naive) get no column
        peers = {p for p in peers if any(p in r.peers for r in results)}
    for op in ops:
        t = (LoadTable if load else Table)(CASES[op], sorted(peers))
        tables.append(t)
        rows = [t.row(r) for r in results if r.op == op]
        parts.append("\n".join([t.header()] + rows))
    threads = results[0].threads if results else 1
    return "\n\n".join(parts + [legend(tables, threads, True, load=load)])


def to_json(results: Sequence[Result], settings: Optional[dict] = None,
            notes: Sequence[str] = ()) -> dict:
    """Everything as a JSON-ready dict: ``quantcore.info()``, the date, the host,
    the settings, the results and the notes."""
    g = gguf_module()
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="seconds"),
        "quantcore": info(),
        "host": {**host(), "numpy": np.__version__,
                 "gguf": getattr(g, "__version__", "installed") if g else None},
        "settings": settings or {},
        "results": [r.to_dict() for r in results],
        "notes": list(notes),
    }


def plot_speedups(results: Sequence[Result], path: str) -> None:
    """A bar chart of quantcore's speedup over each peer, saved to `path` (PNG).
    Needs matplotlib (:class:`BenchError` when it is not installed)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # optional
        raise BenchError("--plot needs matplotlib, which is not installed "
                         "(pip install matplotlib, or pip install 'quantcore[bench]')") from None
    rows = [r for r in results if any(r.peers.get(p, {}).get("timing") for p in r.peers)]
    if not rows:
        raise BenchError("--plot: no peer was measured, nothing to plot")
    peers: List[str] = []
    for r in rows:
        for p in r.peers:
            if r.peers[p].get("timing") is not None and p not in peers:
                peers.append(p)
    ops = list(dict.fromkeys(r.op for r in rows))
    width = 0.8 / len(peers)
    most = max(sum(r.op == op for r in rows) for op in ops)
    fig, axes = plt.subplots(len(ops), 1, squeeze=False,
                             figsize=(max(8.0, 0.42 * most + 2), 3.6 * len(ops) + 0.6))
    threads = rows[0].threads
    for ax, op in zip(axes[:, 0], ops):
        sub = [r for r in rows if r.op == op]
        x = np.arange(len(sub))
        for i, p in enumerate(peers):
            vals = [r.speedup(p) for r in sub]
            ax.bar(x + (i - (len(peers) - 1) / 2) * width,
                   [v if math.isfinite(v) else 0 for v in vals], width,
                   label=f"vs {PEERS[p].label}", color=f"C{i}")
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_ylabel("speedup (x, log)")
        ax.set_title(f"{op}", loc="left", fontsize=10)
        ax.set_xticks(x)
        ax.set_xticklabels([f"{r.config}\n{format_shape(r.shape)}" for r in sub], fontsize=7)
        ax.grid(axis="y", which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"quantcore {__version__}: speedup over peers, same run ({threads} thread"
                 f"{'s' if threads != 1 else ''}; NumPy and gguf quantize on one; median of "
                 f"repeats)", fontsize=10)
    fig.tight_layout()
    try:
        with _io.replacing(path) as tmp:
            fig.savefig(tmp, dpi=120, format=os.path.splitext(path)[1][1:].lower() or "png")
    except (OSError, ValueError) as e:
        why = getattr(e, "strerror", None)
        raise BenchError(f"--plot: cannot write {path!r}: {why}" if why
                         else f"--plot: {e}") from None
    finally:
        plt.close(fig)
