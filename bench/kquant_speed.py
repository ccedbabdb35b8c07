"""K-quant quantize speed: Q4_K, Q5_K, Q6_K on every kernel set, against ggml's own
quantizers (ggml-python) in the same run.

    PYTHONPATH=src python3 bench/kquant_speed.py [--rows 1024] [--cols 4096] [--repeat 5]
                                                 [--threads 1,2] [--importance]

Input: a (rows, cols) float32 matrix, N(0, 0.02) with one value in a thousand 20x larger
(weight-like outliers); with --importance also a random importance vector. Each cell is
the median of --repeat rounds (each round calls every variant once, in turn) in million
weights per second, as wall time and, on one thread, as CPU time of the calling thread (on
a shared machine the wall time includes waiting for a core; the thread's CPU time is what
an idle core would take). ggml's call runs on the calling thread. Every kernel set's bytes are checked against the scalar reference's (and ggml's).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import time

import numpy as np

import quantcore
from quantcore import _ext

KTYPES = {"q4_k": _ext.KTYPE_Q4_K, "q5_k": _ext.KTYPE_Q5_K, "q6_k": _ext.KTYPE_Q6_K}


def _ggml():
    try:
        import ggml
    except Exception:  # not installed, or its library failed to load
        return None
    return ggml


def time_rounds(variants: dict, n: int, repeat: int) -> dict:
    """{name: (wall, thread CPU) million weights per second}: medians over `repeat` rounds,
    every round calling each variant once, in turn (so that a change of load on a shared
    machine hits all of them alike)."""
    wall: dict = {k: [] for k in variants}
    cpu: dict = {k: [] for k in variants}
    for _ in range(repeat):
        for name, (setup, fn) in variants.items():
            setup()
            t0, c0 = time.perf_counter(), time.thread_time()
            fn()
            cpu[name].append(time.thread_time() - c0)
            wall[name].append(time.perf_counter() - t0)
    return {k: (n / np.median(wall[k]) / 1e6, n / max(np.median(cpu[k]), 1e-9) / 1e6)
            for k in variants}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1024)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--importance", action="store_true")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((args.rows, args.cols)) * 0.02).astype(np.float32)
    x[rng.random(x.shape) < 1e-3] *= 20
    imp = rng.uniform(0.01, 4.0, args.cols).astype(np.float32) if args.importance else None
    n = x.size
    ggml = _ggml()
    isas = [i for i in ("scalar", "avx2", "avx512", "neon") if i in quantcore.available_isas()]
    threads = [int(t) for t in args.threads.split(",")]
    before_isa, before_nt = quantcore.get_isa(), quantcore.get_num_threads()
    print(f"{args.rows}x{args.cols}, importance {'yes' if imp is not None else 'no'}, "
          f"load average {' '.join(f'{v:.1f}' for v in os.getloadavg())}; "
          f"M weights/s, wall / thread CPU, median of {args.repeat}")
    try:
        for fmt, kt in KTYPES.items():
            quantcore.set_num_threads(1)
            quantcore.set_isa("scalar")
            want = _ext.quantize_kquant(x, kt, imp)
            variants, notes = {}, {}
            for isa in isas:
                quantcore.set_isa(isa)
                if not np.array_equal(_ext.quantize_kquant(x, kt, imp), want):
                    notes[isa] = " (BYTES DIFFER)"
                for nt in threads if isa == isas[-1] else [1]:
                    def setup(isa=isa, nt=nt):
                        quantcore.set_isa(isa)
                        quantcore.set_num_threads(nt)
                    variants[f"{isa}/{nt}t"] = (setup, lambda: _ext.quantize_kquant(x, kt, imp))
            if ggml is not None:
                t = getattr(ggml, f"GGML_TYPE_{fmt.upper()}")
                rb = ggml.ggml_row_size(t, args.cols)
                out = np.zeros(args.rows * rb, np.uint8)
                fptr = ctypes.POINTER(ctypes.c_float)
                ip = None if imp is None else imp.ctypes.data_as(fptr)

                def run_ggml(t=t, out=out, ip=ip):
                    ggml.ggml_quantize_chunk(t, x.ctypes.data_as(fptr), out.ctypes.data, 0,
                                             args.rows, args.cols, ip)
                run_ggml()
                if not np.array_equal(out.reshape(want.shape), want):
                    notes["ggml"] = " (BYTES DIFFER)"
                variants["ggml"] = (lambda: None, run_ggml)
            rates = time_rounds(variants, n, args.repeat)
            cells = []
            for name, (w, c) in rates.items():
                cpu = "" if name.endswith("t") and not name.endswith("/1t") else f" / {c:.1f}"
                cells.append(f"{name} {w:.1f}{cpu}{notes.get(name.split('/')[0], '')}")
            print(f"{fmt}: " + "; ".join(cells))
    finally:
        quantcore.set_isa(before_isa)
        quantcore.set_num_threads(before_nt)


if __name__ == "__main__":
    main()
