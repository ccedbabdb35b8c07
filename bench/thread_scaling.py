"""Does quantcore release the GIL?  A tiny thread-scaling bench.

With quantcore's own threads set to 1, the same number of forward (and
quantize) calls is run from 1 Python thread and split over 2, 3, ... Python
threads.  If the kernels release the GIL, T Python threads on >= T free cores
finish in about 1/T of the one-thread wall time (speedup ~T); if they held it,
the speedup would stay at ~1.0.

    python bench/thread_scaling.py [--threads 1,2] [--calls 64] [--repeats 5]

Prints one line per (op, Python threads): best-of-repeats wall time and the
speedup over one Python thread, measured in the same run.  The machine's load
matters: on a shared 2-core box, compare the 2-thread line against 1.0 and 2.0.
"""

from __future__ import annotations

import argparse
import os
import threading
import time

import numpy as np

import quantcore as qc


def _wall(fn, calls: int, n_threads: int) -> float:
    per = [calls // n_threads + (1 if i < calls % n_threads else 0) for i in range(n_threads)]
    barrier = threading.Barrier(n_threads + 1)

    def work(n):
        barrier.wait()
        for _ in range(n):
            fn()

    ts = [threading.Thread(target=work, args=(n,)) for n in per]
    for t in ts:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in ts:
        t.join()
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2", help="Python thread counts, e.g. 1,2,4")
    ap.add_argument("--calls", type=int, default=64, help="calls per measurement")
    ap.add_argument("--repeats", type=int, default=5, help="measurements (the best is kept)")
    args = ap.parse_args(argv)
    counts = sorted({int(t) for t in args.threads.split(",")} | {1})

    qc.set_num_threads(1)
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4096, 1024)).astype(np.float32)
    layer4 = qc.QuantizedLinear.from_linear(w, None, qc.QuantConfig.int4())
    layer8 = qc.QuantizedLinear.from_linear(w, None, qc.QuantConfig.int8(compute="float32"))
    x1 = rng.standard_normal((1, 1024)).astype(np.float32)
    x16 = rng.standard_normal((16, 1024)).astype(np.float32)
    wq = rng.standard_normal((512, 1024)).astype(np.float32)
    ops = {
        "forward int4/i8 M=1 4096x1024": lambda: layer4(x1),
        "forward int8/f32 M=16 4096x1024": lambda: layer8(x16),
        "quantize int4 g32 512x1024": lambda: qc.quantize(wq, qc.QuantConfig.int4()),
    }
    print(f"quantcore {qc.__version__}, ISA {qc.get_isa()}, quantcore threads "
          f"{qc.get_num_threads()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}; "
          f"{args.calls} calls, best of {args.repeats}")
    for name, fn in ops.items():
        fn()
        base = None
        for t in counts:
            best = min(_wall(fn, args.calls, t) for _ in range(args.repeats))
            base = best if t == 1 else base
            print(f"{name:34s} python threads {t}: {best * 1e3:8.2f} ms  speedup {base / best:4.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
