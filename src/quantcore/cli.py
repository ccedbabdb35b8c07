"""The ``quantcore`` command (also ``python -m quantcore``).

Subcommands:

* ``quantcore info [--json]``: version, build flags, OpenMP, CPU features and the
  kernel set in use.
* ``quantcore bench [...]``: quantize/dequantize throughput against a NumPy
  baseline and gguf's reference (see :mod:`quantcore.benchmark`).

Each subcommand is a pair: ``_add_<name>(subparsers)`` declares its arguments
and ``_cmd_<name>(args) -> int`` runs it.  Errors print one line on stderr and
exit non-zero (``--traceback`` shows the full traceback instead).  Nothing
beyond the standard library is imported until a subcommand needs it.
"""

from __future__ import annotations

import argparse
import sys
from typing import List, NoReturn, Optional, Sequence

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
    p = sub.add_parser("info", help="show the version, build, CPU features and kernel set",
                       description="Show the version, build flags, OpenMP, the CPU's SIMD "
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

def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {n}")
    return n


def _name_list(text: str) -> List[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of names, got {text!r}")
    return names


def _add_bench(sub) -> None:
    # Names are checked by quantcore.benchmark (CASES, CONFIGS); the help lists
    # them without importing the package (tests/test_cli.py keeps them in step).
    configs = "int8, int4_g32, q8_0, q4_0, q4_1"
    ops = "quantize, dequantize, linear"
    p = sub.add_parser(
        "bench", help="benchmark quantize/dequantize against NumPy and gguf",
        description="Time quantize, dequantize and QuantizedLinear forward on LLM shapes against a NumPy "
                    "implementation of the same rule and gguf's NumPy reference (when "
                    "installed), in one run at one thread count, then the single-thread "
                    "targets. Medians over repeats after a warmup.")
    p.add_argument("--quick", action="store_true",
                   help="smaller shapes and fewer repeats (about 10 s)")
    p.add_argument("--repeats", type=_positive_int, metavar="N",
                   help="timed samples per measurement (default 5, 3 with --quick)")
    p.add_argument("--threads", type=_positive_int, metavar="N",
                   help="quantcore threads (default: the current setting, "
                        "QUANTCORE_NUM_THREADS or the core count)")
    p.add_argument("--shapes", metavar="RxC[,RxC...]",
                   help="weight shapes (out_features x in_features), e.g. 4096x4096,14336x4096 "
                        "(default: 64x1024 (L2-sized), 4096x4096, 14336x4096, 4096x14336)")
    p.add_argument("--configs", type=_name_list, metavar="NAME[,NAME...]",
                   help=f"configs to run (default: all of {configs})")
    p.add_argument("--ops", type=_name_list, metavar="OP[,OP...]",
                   help=f"ops to run (default: {ops})")
    p.add_argument("--no-targets", dest="targets", action="store_false",
                   help="skip the single-thread targets section")
    p.add_argument("--json", metavar="FILE", dest="json_path",
                   help="write all results, quantcore.info() and the date as JSON")
    p.add_argument("--plot", metavar="FILE.png", dest="plot_path",
                   help="draw a bar chart of the speedups (needs matplotlib)")
    p.set_defaults(func=_cmd_bench)


def _cmd_bench(args: argparse.Namespace) -> int:
    from . import benchmark
    shapes = benchmark.parse_shapes(args.shapes) if args.shapes is not None else None
    benchmark.bench(shapes=shapes, configs=args.configs, ops=args.ops, threads=args.threads,
                    repeats=args.repeats, quick=args.quick, targets=args.targets,
                    json_path=args.json_path, plot_path=args.plot_path)
    return 0


# ---- main ------------------------------------------------------------------------------

def _parser() -> _Parser:
    parser = _Parser(prog=PROG, description="quantcore: fast CPU int8/int4 quantization.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    parser.add_argument("--traceback", action="store_true",
                        help="show the full traceback when a command fails")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_info(sub)
    _add_bench(sub)
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
        from . import __version__
        print(f"{PROG} {__version__}")
        return 0
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
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
