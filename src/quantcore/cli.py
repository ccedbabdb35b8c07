"""The ``quantcore`` command (also ``python -m quantcore``).

Subcommands:

* ``quantcore info [--json]``: version, build flags, thread pool, CPU features and the
  kernel set in use.
* ``quantcore bench [...]``: quantize, dequantize and QuantizedLinear forward
  timed against a NumPy baseline and the installed peers (see
  :mod:`quantcore.bench`).
* ``quantcore quantize IN.safetensors -o OUT.safetensors [...]``: quantize a
  model's matrices, print per-layer metrics (see :mod:`quantcore.model`);
  ``quantcore quantize IN.gguf -o OUT.gguf --recipe q4_k_m`` (or
  ``--target-bits``) quantizes a GGUF model as llama.cpp does.
* ``quantcore inspect FILE``: what a safetensors file holds (:mod:`quantcore.files`).

Each subcommand is a pair: ``_add_<name>(subparsers)`` declares its arguments
and ``_cmd_<name>(args) -> int`` runs it.  Errors print one line on stderr and
exit non-zero (``--traceback`` shows the full traceback instead).  Nothing
beyond the standard library is imported until a subcommand needs it.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Dict, List, NoReturn, Optional, Sequence, Union

__all__ = ["main"]

PROG = "quantcore"


class _UsageError(Exception):
    """A command-line mistake: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (no usage block)."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(f"{self.prog}: error: {message} (see '{self.prog} --help')")


# ---- info ------------------------------------------------------------------------------

def _add_info(sub) -> None:
    p = sub.add_parser("info", help="show the version, build flags, CPU features and the "
                                    "kernel set in use",
                       description="Show the version, build flags, thread pool, the CPU's SIMD "
                                   "features and the kernel set in use.")
    p.add_argument("--json", action="store_true", help="print quantcore.info() as JSON")
    p.set_defaults(func=_cmd_info)


def _cmd_info(args: argparse.Namespace) -> int:
    import quantcore
    if args.json:
        import json
        print(json.dumps(quantcore.info(), indent=2))
    else:
        quantcore.show_config()
    return 0


# ---- bench -----------------------------------------------------------------------------

def _int_or_text(text: str) -> Union[int, str]:
    """An int where the text is one, else the text: the API checks the value and
    words the error (so the command line accepts and rejects what it does)."""
    try:
        return int(text)
    except ValueError:
        return text


def _name_list(text: str) -> List[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of names, got {text!r}")
    return names


def _add_bench(sub) -> None:
    # Names are checked by quantcore.bench (CASES, CONFIGS); the help lists
    # them without importing the package (tests/test_cli.py keeps them in step).
    configs = "int8, int4_g32, q8_0, q4_0, q4_1"
    ops = "quantize, dequantize, linear, kquant, kquantize"
    p = sub.add_parser(
        "bench", help="time quantize, dequantize and QuantizedLinear against NumPy and the "
                      "installed peers",
        description="Time quantcore on LLM layer shapes against its peers, in one run at one "
                    "thread count: quantize and dequantize (int8, int4 g32 and the GGUF block "
                    "formats) against a NumPy implementation of the same rule and gguf's "
                    "reference; QuantizedLinear forward (int8 and int4 weights, int8 and float32 "
                    "compute, M = 1 to 512 rows) against NumPy, a naive dequantize-then-matmul, "
                    "PyTorch and ONNX Runtime; the K-quants (Q4_K, Q5_K, Q6_K: linear and "
                    "quantize) against ggml itself through ggml-python. Peers that are not "
                    "installed get no column (pip "
                    "install 'quantcore[bench]' brings them). Prints one table per op with "
                    "medians over repeats after a warmup and quantcore's speedup over each peer; "
                    "a legend under the tables explains the columns.")
    p.add_argument("--quick", action="store_true",
                   help="smaller shapes and fewer repeats (under a minute)")
    p.add_argument("--repeats", type=_int_or_text, metavar="N",
                   help="timed samples per measurement (default 5, 3 with --quick, 40 with --load)")
    p.add_argument("--threads", type=_int_or_text, metavar="N",
                   help="threads for quantcore and the linear peers (default: the current "
                        "setting, QUANTCORE_NUM_THREADS or the core count)")
    p.add_argument("--shapes", metavar="RxC[,RxC...]",
                   help="weight shapes (out_features x in_features), e.g. 4096x4096,14336x4096; "
                        "they also set the linear layers (default: an L2-sized one for this "
                        "machine, 4096x4096, 14336x4096, 4096x14336)")
    p.add_argument("--configs", type=_name_list, metavar="NAME[,NAME...]",
                   help=f"quantize/dequantize configs to run (default: all of {configs})")
    p.add_argument("--ops", type=_name_list, metavar="OP[,OP...]",
                   help=f"ops to run (default: {ops})")
    # Accepted so that older scripts keep working; the report has no targets section.
    p.add_argument("--no-targets", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--load", action="store_true",
                   help="time the linear rows with another process keeping one core busy: "
                        "median and p90 of single calls for quantcore and each peer, and "
                        "quantcore's quiet 1-thread median (default ops: linear; kquant too)")
    p.add_argument("--json", metavar="FILE", dest="json_path",
                   help="write all results, quantcore.info(), the machine and the date as JSON")
    p.add_argument("--plot", metavar="FILE.png", dest="plot_path",
                   help="draw a bar chart of the speedups (needs matplotlib)")
    p.set_defaults(func=_cmd_bench)


def _cmd_bench(args: argparse.Namespace) -> int:
    from .bench import BenchError, parse_shapes
    from .bench.run import bench
    try:
        shapes = parse_shapes(args.shapes) if args.shapes is not None else None
        bench(shapes=shapes, configs=args.configs, ops=args.ops, threads=args.threads,
              repeats=args.repeats, quick=args.quick, json_path=args.json_path,
              plot_path=args.plot_path, load=args.load)
    except BenchError as e:
        raise _UsageError(f"{PROG} bench: error: {e}") from None
    return 0


# ---- quantize --------------------------------------------------------------------------

def _add_quantize(sub) -> None:
    p = sub.add_parser(
        "quantize", help="quantize the float matrices of a .safetensors or .gguf model into a "
                         "new file",
        description="Quantize every float matrix (ndim >= 2) of a safetensors file and write a "
                    "quantcore safetensors file (packed codes, scales and zero points as ordinary "
                    "tensors, configs as JSON metadata). Other tensors are copied as they are. "
                    "A GGUF input (with --recipe or --target-bits) is quantized as llama.cpp's "
                    "llama-quantize does, into a GGUF file keeping every metadata key and "
                    "non-weight tensor. Prints a per-layer metrics table and the model totals.")
    p.add_argument("input", metavar="IN.safetensors", help="the model to quantize")
    p.add_argument("-o", "--output", metavar="OUT.safetensors", required=True,
                   help="where to write the quantized model (replaced if it exists)")
    # Values are checked by QuantConfig, so the command accepts and rejects what
    # the API does, in the API's words (tests/test_cli.py holds them together).
    p.add_argument("--bits", type=_int_or_text, metavar="{4,8}",
                   help="bits per weight (default 4)")
    p.add_argument("--group-size", type=_int_or_text, metavar="N",
                   help="weights per scale along each row: a power of two >= 16, or 'channel' "
                        "for one scale per row (default: 32 for 4 bits, 'channel' for 8)")
    p.add_argument("--format", metavar="{q8_0,q4_0,q4_1}",
                   help="a GGUF block format instead of --bits/--group-size/--asymmetric")
    p.add_argument("--method", default="absmax", metavar="{absmax,mse,gptq}",
                   help="how scales (and, for gptq, codes) are chosen (default absmax); gptq "
                        "needs --calibration, mse uses --calibration or --imatrix when given")
    cal = p.add_mutually_exclusive_group()
    cal.add_argument("--calibration", metavar="STATS.safetensors",
                     help="statistics of each layer's inputs (quantcore.calibrate.save_stats, e.g. "
                          "from quantcore.torch.collect_stats), by layer or weight name")
    cal.add_argument("--imatrix", metavar="FILE",
                     help="llama.cpp importance matrix (GGUF or .dat; per-channel mean squares "
                          "only, for --method mse and the K-quant formats), by weight name")
    p.add_argument("--act-order", action="store_true",
                   help="gptq: quantize the input channels in order of decreasing importance")
    sym = p.add_mutually_exclusive_group()
    sym.add_argument("--symmetric", dest="symmetric", action="store_true", default=True,
                     help="codes symmetric around zero (default)")
    sym.add_argument("--asymmetric", dest="symmetric", action="store_false",
                     help="a zero point per scale")
    p.add_argument("--scale-dtype", metavar="{float32,float16}",
                   help="how scales are stored (default float32)")
    p.add_argument("--include", action="append", metavar="PATTERN",
                   help="quantize only tensors whose name matches this glob (repeat the option "
                        "for more patterns)")
    p.add_argument("--exclude", action="append", metavar="PATTERN", default=[],
                   help="keep tensors whose name matches this glob in float, e.g. "
                        "'*embeddings*' (repeatable)")
    p.add_argument("--int8", action="append", metavar="PATTERN", default=[],
                   help="quantize tensors matching this glob to int8 per channel instead, e.g. "
                        "'lm_head*' (repeatable)")
    p.add_argument("--recipe", metavar="{q4_k_s,q4_k_m,q5_k_s,q5_k_m,q6_k}",
                   help="llama.cpp's K-quant mix: a format per tensor by its rules for GGUF "
                        "tensor names (the way to quantize a .gguf input)")
    p.add_argument("--target-bits", type=_float_or_text, metavar="BITS",
                   help="instead of --recipe: a format per tensor (Q4_K, Q5_K, Q6_K, Q8_0) by "
                        "measured error, averaging at most BITS bits per weight (4.5 to 8.5)")
    p.add_argument("--allow-requantize", action="store_true",
                   help=".gguf input: dequantize and requantize weights that are already "
                        "quantized (refused otherwise)")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar")
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    p.set_defaults(func=_cmd_quantize)


def _float_or_text(text: str) -> Union[float, str]:
    """A float where the text is one, else the text (the API words the error)."""
    try:
        return float(text)
    except ValueError:
        return text


def _plan_error(e: Exception) -> Exception:
    """The API's error about recipe / target_bits, prefixed with the option's name."""
    msg = str(e)
    flag = next((f for f, w in (("--recipe", "recipe"), ("--target-bits", "target_bits"))
                 if msg.startswith(w)), None)
    return type(e)(f"{flag}: {msg}" if flag else msg)


def _check_plan_flags(args: argparse.Namespace) -> None:
    """--recipe and --target-bits values, checked before any file is read."""
    from .model import _check_recipe, _check_target_bits
    if args.recipe is not None and args.target_bits is not None:
        raise _UsageError(f"{PROG} quantize: error: give --recipe or --target-bits, not both")
    try:
        if args.recipe is not None:
            _check_recipe(args.recipe)
        if args.target_bits is not None:
            _check_target_bits(args.target_bits)
    except (TypeError, ValueError) as e:
        raise _UsageError(f"{PROG} quantize: error: {_plan_error(e)}") from None


def _is_gguf(path: str) -> bool:
    """Whether `path` is a regular file starting with GGUF's magic (anything else,
    a FIFO or a missing file included, is left to the safetensors path's checks)."""
    from . import _io
    try:
        with _io.open_regular(path) as f:
            return f.read(4) == b"GGUF"
    except (OSError, ValueError):
        return False


def _cmd_quantize_gguf(args: argparse.Namespace) -> int:
    """A GGUF model in, a GGUF model out: quantcore.model.quantize_gguf."""
    import os
    import warnings
    from .model import quantize_gguf
    given = [flag for flag, on in (
        ("--bits", args.bits is not None), ("--group-size", args.group_size is not None),
        ("--format", args.format is not None), ("--method", args.method != "absmax"),
        ("--calibration", args.calibration is not None), ("--act-order", args.act_order),
        ("--asymmetric", not args.symmetric), ("--scale-dtype", args.scale_dtype is not None),
        ("--include", bool(args.include)), ("--exclude", bool(args.exclude)),
        ("--int8", bool(args.int8))) if on]
    if given:
        raise _UsageError(f"{PROG} quantize: error: a .gguf input takes --recipe or "
                          f"--target-bits (and --imatrix, --allow-requantize); drop "
                          f"{', '.join(given)}")
    if args.recipe is None and args.target_bits is None:
        raise _UsageError(f"{PROG} quantize: error: {args.input} is a GGUF file: give --recipe "
                          f"q4_k_m (or q4_k_s, q5_k_s, q5_k_m, q6_k) or --target-bits BITS")
    imatrix = None
    if args.imatrix is not None:
        from . import _io
        from .calibrate import read_imatrix
        _io.stat_regular(args.input)
        _io.stat_regular(args.imatrix)
        try:
            imatrix = read_imatrix(args.imatrix)
        except ValueError as e:
            raise ValueError(str(e) if args.imatrix in str(e) else f"{args.imatrix}: {e}") \
                from None
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            m = quantize_gguf(args.input, args.output, recipe=args.recipe,
                              target_bits=args.target_bits, imatrix=imatrix,
                              imatrix_file=args.imatrix,
                              allow_requantize=args.allow_requantize, progress=args.progress)
    except (TypeError, ValueError) as e:
        raise _plan_error(e) from None
    for w in caught:
        print(f"{PROG} quantize: warning: {w.message}", file=sys.stderr)
    print(m.to_markdown() if args.markdown else m)
    orig = m.total_original_bits() / 8
    comp = m.total_compressed_bits() / 8
    print(f"\nparameters: {m.total_parameters():,}; {_size(orig)} -> {_size(comp)} "
          f"({m.model_compression_ratio():.2f}x, {m.average_effective_bits():.3f} bits/param)")
    print(f"wrote {args.output} ({_size(os.path.getsize(args.output))})")
    return 0


def _quantize_config(args: argparse.Namespace):
    """The QuantConfig the options ask for (QuantConfig's ValueError when a value is bad)."""
    from .config import QuantConfig
    extra: Dict[str, Any] = {"act_order": True} if args.act_order else {}
    if args.format:
        clash = [flag for flag, given in (("--bits", args.bits is not None),
                                          ("--group-size", args.group_size is not None),
                                          ("--asymmetric", not args.symmetric),
                                          ("--scale-dtype", args.scale_dtype is not None))
                 if given]
        if clash:
            raise ValueError(f"--format {args.format} fixes bits, group size, symmetry and "
                             f"scale dtype; drop {', '.join(clash)}")
        preset = getattr(QuantConfig, args.format, None) if args.format.startswith("q") else None
        if preset is None:
            QuantConfig(format=args.format)  # an unknown format: QuantConfig says which exist
        assert preset is not None
        return preset(method=args.method, **extra)
    bits = 4 if args.bits is None else args.bits
    gs = args.group_size
    if gs is None:
        gs = 32 if bits == 4 else "channel"
    return QuantConfig(bits=bits, group_size=None if gs == "channel" else gs,
                       granularity="channel" if gs == "channel" else "group",
                       symmetric=args.symmetric, scale_dtype=args.scale_dtype or "float32",
                       method=args.method, **extra)


def _check_calibration_flags(args: argparse.Namespace) -> None:
    """--method, --calibration, --imatrix and --act-order that do not combine."""
    if args.method == "gptq" and not args.calibration:
        raise ValueError("--method gptq needs --calibration STATS.safetensors (statistics of "
                         "each layer's inputs; an --imatrix holds only their diagonal)"
                         if not args.imatrix else
                         "--method gptq needs the full input statistics of --calibration; an "
                         "--imatrix holds only their diagonal: use it with --method mse")
    kquant = bool(args.format) and args.format.endswith("_k")
    if (args.calibration or args.imatrix) and args.method == "absmax" and not kquant:
        raise ValueError(f"{'--calibration' if args.calibration else '--imatrix'} is used by "
                         f"--method mse or gptq (or a K-quant --format), not absmax")
    if args.act_order and args.method != "gptq":
        raise ValueError("--act-order needs --method gptq")


def _flag_of(e: Exception) -> str:
    """``"--group-size: "`` for QuantConfig's "group_size must be ..." (the option
    that carried the value), "" when the message names no field."""
    field = str(e).split(" ", 1)[0].split("=", 1)[0]
    flags = {"bits": "--bits", "group_size": "--group-size", "scale_dtype": "--scale-dtype",
             "method": "--method", "format": "--format"}
    return f"{flags[field]}: " if field in flags else ""


def _config_label(cfg) -> str:
    if cfg.format:
        label = cfg.format
        if cfg.method != "absmax":
            label += f" {cfg.method}"
        return label + (" act-order" if cfg.act_order else "")
    gran = {"group": f"g{cfg.group_size}", "channel": "per-row", "tensor": "per-tensor"}
    label = f"int{cfg.bits} {gran[cfg.granularity]}"
    if not cfg.symmetric:
        label += " asym"
    if cfg.scale_dtype == "float16":
        label += " f16"
    if cfg.method != "absmax":
        label += f" {cfg.method}"
    if cfg.act_order:
        label += " act-order"
    return label


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024.0
    return f"{n:.2f} GiB"  # pragma: no cover


def _print_table(head: Sequence[str], rows: List[List[str]], markdown: bool,
                 total: Optional[List[str]] = None) -> None:
    if markdown:
        print("| " + " | ".join(head) + " |")
        print("|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|")
        for r in rows + ([total] if total else []):
            print("| " + " | ".join(c.replace("|", "\\|") for c in r) + " |")
        return
    allrows = [list(head)] + rows + ([total] if total else [])
    widths = [max(len(r[i]) for r in allrows) for i in range(len(head))]

    def line(r):
        return "  ".join(c.ljust(w) if i < 3 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(r, widths))).rstrip()

    rule = "  ".join("-" * w for w in widths)
    print(line(head))
    print(rule)
    for r in rows:
        print(line(r))
    if total:
        print(rule)
        print(line(total))


def _cmd_quantize(args: argparse.Namespace) -> int:
    import os
    from .config import QuantConfig
    from .files import load, save
    from .model import quantize_model
    from .tensor import QuantizedTensor

    _check_plan_flags(args)
    if _is_gguf(args.input):
        return _cmd_quantize_gguf(args)
    if args.allow_requantize:
        raise _UsageError(f"{PROG} quantize: error: --allow-requantize is for a .gguf input")
    planned = args.recipe is not None or args.target_bits is not None
    if planned:
        given = [flag for flag, on in (
            ("--bits", args.bits is not None), ("--group-size", args.group_size is not None),
            ("--format", args.format is not None), ("--method", args.method != "absmax"),
            ("--act-order", args.act_order), ("--asymmetric", not args.symmetric),
            ("--scale-dtype", args.scale_dtype is not None), ("--int8", bool(args.int8)))
            if on]
        if given:
            raise _UsageError(f"{PROG} quantize: error: --recipe and --target-bits choose every "
                              f"tensor's format; drop {', '.join(given)}")
        args.format = "q4_k"  # the calibration flags take the K-quant path
    try:
        _check_calibration_flags(args)
        cfg = _quantize_config(args)
        extra: Dict[str, Any] = {"act_order": True} if args.act_order else {}
        int8 = QuantConfig.int8(scale_dtype=args.scale_dtype or "float32", method=args.method,
                                **extra)
    except ValueError as e:
        raise _UsageError(f"{PROG} quantize: error: {_flag_of(e)}{e}") from None
    # checked before the work starts, so that it fails at once: a missing or special
    # input, an output that is the input, a directory, a device, a read-only file
    from . import _io
    _io.stat_regular(args.input)
    _io.check_output(args.output)
    if _io.same_file(args.input, args.output):
        same = ("the input file" if os.path.abspath(args.output) == os.path.abspath(args.input)
                else f"the same file as the input {args.input}")
        raise ValueError(f"-o {args.output} is {same}; quantize does not replace its input: "
                         f"give another output path")
    calibration = None
    if args.calibration or args.imatrix:
        from .calibrate import load_stats, read_imatrix
        cpath = args.calibration or args.imatrix
        _io.stat_regular(cpath)
        calibration = load_stats(cpath) if args.calibration else read_imatrix(cpath)
    weights = load(args.input)
    if planned:
        try:
            model = quantize_model(weights, include=args.include, exclude=args.exclude,
                                   progress=args.progress, calibration=calibration,
                                   recipe=args.recipe, target_bits=args.target_bits)
        except (TypeError, ValueError) as e:
            raise _plan_error(e) from None
    else:
        model = quantize_model(weights, cfg, include=args.include, exclude=args.exclude,
                               overrides={p: int8 for p in args.int8}, progress=args.progress,
                               calibration=calibration)
    save(args.output, model, metadata={"quantized_from": os.path.basename(args.input)})

    m = model.metrics
    assert m is not None  # quantize_model always fills in the metrics
    rows = []
    ncal = 0
    for name, value in model.items():
        shape = "x".join(map(str, value.shape)) or "scalar"
        if isinstance(value, QuantizedTensor):
            lm = m[name]
            snr = "-" if lm.snr_db is None else f"{lm.snr_db:.2f}"
            rows.append([name, shape, _config_label(value.config),
                         f"{lm.effective_bits_per_param:.3f}", f"{lm.quantization_mse:.3e}", snr])
            if calibration is not None:
                ce = lm.calibrated_error
                ncal += ce is not None
                rows[-1].append("no" if ce is None else f"{ce:.3e}")
        else:
            eff = f"{8 * value.dtype.itemsize}" if value.dtype.kind == "f" else "-"
            rows.append([name, shape, f"{value.dtype.name} (kept)", eff, "-", "-"])
            if calibration is not None:
                rows[-1].append("-")
    nq = sum(isinstance(v, QuantizedTensor) for v in model.values())
    qnames = [n for n, v in model.items() if isinstance(v, QuantizedTensor)]
    qparams = sum(m[n].n_parameters for n in qnames)
    qmse = (sum(m[n].n_parameters * m[n].quantization_mse for n in qnames) / qparams
            if qparams else 0.0)
    total = ["total", f"{m.total_parameters():,} params", f"{nq} of {len(model)} quantized",
             f"{m.average_effective_bits():.3f}", f"{m.mean_quantization_mse():.3e}", ""]
    head = ["tensor", "shape", "format", "eff bits", "MSE", "SNR dB"]
    if calibration is not None:
        head.append("calibrated: out err")
        total.append("")
    _print_table(head, rows, args.markdown, total)
    orig = m.total_original_bits() / 8
    comp = m.total_compressed_bits() / 8
    print(f"\nparameters: {m.total_parameters():,} ({qparams:,} quantized); "
          f"{_size(orig)} -> {_size(comp)} ({m.model_compression_ratio():.2f}x, "
          f"{m.average_effective_bits():.3f} bits/param)")
    print(f"MSE: {m.mean_quantization_mse():.4e} over all parameters, {qmse:.4e} over the "
          f"quantized ones")
    if calibration is not None:
        print(f"calibrated: {ncal} of {nq} quantized tensors (statistics from "
              f"{args.calibration or args.imatrix}); out err = relative output error on the "
              f"calibration inputs, tr(dW H dW^T) / tr(W H W^T)")
    print(f"wrote {args.output} ({_size(os.path.getsize(args.output))})")
    return 0


# ---- inspect ---------------------------------------------------------------------------

def _add_inspect(sub) -> None:
    p = sub.add_parser("inspect", help="list the tensors of a .safetensors file: formats, "
                                       "shapes, bytes, metrics",
                       description="List the tensors of a safetensors file (a quantcore file or "
                                   "any other): names, formats, shapes, bytes and bits per "
                                   "parameter, and the metrics recorded at quantization. The "
                                   "header is validated; --verify also reads and checks every "
                                   "tensor.")
    p.add_argument("file", metavar="FILE", help="a .safetensors file")
    p.add_argument("--verify", action="store_true",
                   help="read every tensor and check it (as quantcore.load does)")
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    p.set_defaults(func=_cmd_inspect)


def _cmd_inspect(args: argparse.Namespace) -> int:
    import math
    from .files import Layout, load, read_header

    header = read_header(args.file)
    layout = Layout(header)
    if args.verify:
        load(args.file)
    kind = "quantcore file" if layout.is_quantcore else "safetensors file"
    nq = len(layout.quantized)
    print(f"{args.file}: {kind}, {len(layout.order)} tensors ({nq} quantized), "
          f"{_size(header.file_size)}")
    for k, v in header.metadata.items():
        if k != "quantcore":
            v = " ".join(v.split())
            print(f"  metadata {k}: {v[:100] + '...' if len(v) > 100 else v}")
    metrics = layout.metrics
    rows = []
    params = 0
    stored = 0
    for name in layout.order:
        if name in layout.quantized:
            shape, dtype, cfg, entries = layout.quantized[name]
            n = math.prod(shape)
            nbytes = sum(e.end - e.begin for e in entries.values())
            fmt = _config_label(cfg)
        else:
            e = layout.plain[name]
            shape, n, nbytes, fmt = e.shape, math.prod(e.shape), e.end - e.begin, e.dtype
        params += n
        stored += nbytes
        lm = metrics[name] if metrics is not None and name in metrics else None
        mse = "-" if lm is None or name not in layout.quantized else f"{lm.quantization_mse:.3e}"
        snr = "-" if lm is None or lm.snr_db is None else f"{lm.snr_db:.2f}"
        rows.append([name, "x".join(map(str, shape)) or "scalar", fmt, f"{nbytes:,}",
                     f"{8 * nbytes / n:.3f}" if n else "-", mse, snr])
    total = ["total", f"{params:,} values", "", f"{stored:,}",
             f"{8 * stored / params:.3f}" if params else "-", "", ""]
    _print_table(["tensor", "shape", "format", "bytes", "bits/value", "MSE", "SNR dB"], rows,
                 args.markdown, total)
    if args.verify:
        print("verified: every tensor read and checked")
    return 0


# ---- main ------------------------------------------------------------------------------

def _parser() -> _Parser:
    parser = _Parser(
        prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="quantcore: int8/int4 weight quantization and quantized linear layers on "
                    "the CPU\n(C kernels for AVX2, AVX-512 and NEON, with a NumPy-first Python "
                    "API).",
        epilog="'quantcore COMMAND --help' describes a command's options.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    parser.add_argument("--traceback", action="store_true",
                        help="show the full traceback when a command fails")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_info(sub)
    _add_bench(sub)
    _add_quantize(sub)
    _add_inspect(sub)
    parser.set_defaults(_subparsers=sub)
    return parser


def _error(message: str) -> None:
    print(" ".join(str(message).split()) or "failed", file=sys.stderr)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line with `argv` (default ``sys.argv[1:]``); returns the exit status."""
    parser = _parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:  # blame the subcommand whose arguments they are
            sub = parser if args.command is None else args._subparsers.choices[args.command]
            sub.error(f"unrecognized arguments: {' '.join(extra)}")
    except _UsageError as e:
        _error(str(e))
        return 2
    if args.version:
        from ._version import __version__
        print(f"{PROG} {__version__}")
        return 0
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except _UsageError as e:  # flags that parse but do not combine
        _error(str(e))
        return 2
    except KeyboardInterrupt:
        _error(f"{PROG} {args.command}: interrupted")
        return 130
    except BrokenPipeError:
        # the reader went away (quantcore info | head): quiet, and no error at exit
        import os
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except OSError:
            pass
        return 141
    except Exception as e:  # one line, not a traceback
        if args.traceback:
            raise
        what = "" if isinstance(e, (ValueError, TypeError, OSError, RuntimeError)) and str(e) \
            else f"{type(e).__name__}: "
        _error(f"{PROG} {args.command}: error: {what}{e or type(e).__name__}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
