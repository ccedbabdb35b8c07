#!/usr/bin/env bash
# Build an AddressSanitizer + UndefinedBehaviorSanitizer copy of quantcore._ext in
# a separate build directory and run the C-facing tests against it.  Any report
# (heap overflow, use after free, misaligned or overflowing arithmetic, ...) stops
# the process and fails the run.
#
# Usage: tests/sanitize/run.sh [pytest args...]
#   SAN_BUILD_DIR  where the sanitized package is assembled (default build/sanitize)
#   SANITIZE       sanitizers (default address,undefined)
#   SAN_TESTS      test modules (default: quantize/dequantize/pack/linear/gemm, guard
#                  pages, bad inputs, ISA identity, properties, K-quants)
#   SAN_K          pytest -k expression (default: leaves out two oracle-only sweeps)
#   SAN_C_HARNESS=0  skip the C harness (tests/c) built with -fsanitize
#   PYTHON         interpreter (default python3)
#
# Python itself is not instrumented: libasan is LD_PRELOADed, leak detection is
# off (the interpreter "leaks" by design), and halt_on_error makes the first
# report fatal.  The sanitized build uses -O1 -g (setup.py, QUANTCORE_SANITIZE).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
PY=${PYTHON:-python3}
SANITIZE=${SANITIZE:-address,undefined}
OUT=${SAN_BUILD_DIR:-$ROOT/build/sanitize}
CC=${CC:-gcc}
LIBASAN=$($CC -print-file-name=libasan.so)
if [ ! -e "$LIBASAN" ]; then
    echo "SKIP: $CC has no libasan.so (install the compiler's sanitizer runtime)"
    exit 0
fi

echo "== sanitized build ($SANITIZE) into $OUT"
t0=$(date +%s)
# build_ext skips the build when the extension is newer than its sources
mkdir -p "$OUT/lib" "$OUT/tmp"
# A separate build-temp keeps these objects apart from the normal build's.
QUANTCORE_SANITIZE=$SANITIZE CC=$CC "$PY" setup.py -q build_ext -j 2 \
    --build-lib "$OUT/lib" --build-temp "$OUT/tmp" >"$OUT/build.log" 2>&1 \
    || { tail -40 "$OUT/build.log"; exit 1; }
# The pure-Python files (subpackages too) beside the sanitized extension.
(cd src && find quantcore -name '*.py' -exec cp --parents {} "$OUT/lib/" \;)
cp -r src/quantcore/include "$OUT/lib/quantcore/" 2>/dev/null || true
echo "   built in $(( $(date +%s) - t0 )) s"

export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=1:strict_init_order=1:detect_stack_use_after_return=1:allocator_may_return_null=1:print_summary=1"
export UBSAN_OPTIONS="halt_on_error=1:abort_on_error=1:print_stacktrace=1:report_error_type=1"
# Reports go to a file per process as well as stderr, so that one from a child
# process (the subprocess-based tests) is found even when its stderr is captured.
REPORTS="$OUT/reports"
rm -rf "$REPORTS"; mkdir -p "$REPORTS"
export ASAN_OPTIONS="$ASAN_OPTIONS:log_path=$REPORTS/asan"
export UBSAN_OPTIONS="$UBSAN_OPTIONS:log_path=$REPORTS/ubsan"

check_reports() {
    if ls "$REPORTS"/* >/dev/null 2>&1; then
        echo "!! sanitizer reports:"
        for f in "$REPORTS"/*; do echo "--- $f"; head -60 "$f"; done
        return 1
    fi
}

echo "== sanitized import"
LD_PRELOAD="$LIBASAN" PYTHONPATH="$OUT/lib" "$PY" -c \
    "import quantcore, sys; f = quantcore.info()['build_flags']; print('  ', quantcore.__file__); sys.exit(0 if '-fsanitize=' in f else 'not a sanitized build: ' + f)"

DEFAULT_TESTS="tests/test_quantize.py tests/test_pack.py tests/test_linear.py tests/test_gemm.py
tests/test_guard_pages.py tests/test_bad_inputs.py tests/test_isa_identity.py tests/test_properties.py
tests/test_kquants.py tests/test_kquant_linear.py tests/test_linear_extremes.py tests/test_packed.py"
TESTS=${SAN_TESTS:-$DEFAULT_TESTS}
existing=""
for t in $TESTS; do [ -e "${t%%::*}" ] && existing="$existing $t"; done
echo "== pytest under ASan+UBSan:$existing"
t0=$(date +%s)
set +e
# Memory safety needs every kernel x shape x ISA run once, not every oracle comparison:
# the oracle-only sweeps of test_quantize are left out (test_simd_equals_scalar and the
# guard pages run the same kernels on the same shapes), and hypothesis draws 20 examples.
# -p no:cacheprovider: the tree may be read-only.  PYTHONPATH puts the sanitized copy
# first (the repo root has no importable quantcore: src/ layout).
SAN_K=${SAN_K-not test_matches_oracle and not test_magnitudes_and_distributions}
LD_PRELOAD="$LIBASAN" PYTHONPATH="$OUT/lib" HYPOTHESIS_PROFILE=${HYPOTHESIS_PROFILE:-sanitize} \
    "$PY" -m pytest -q -p no:cacheprovider -x -m "not slow" -k "$SAN_K" $existing "$@"
rc=$?
set -e
echo "   pytest: rc=$rc in $(( $(date +%s) - t0 )) s"
check_reports || rc=1

if [ "${SAN_C_HARNESS:-1}" != 0 ]; then
    echo "== C harness (tests/c) with -fsanitize=$SANITIZE"
    t0=$(date +%s)
    set +e
    BUILD_DIR="$OUT/ctest" CC=$CC CFLAGS="-O1 -g -fno-omit-frame-pointer -fsanitize=$SANITIZE -fno-sanitize-recover=all" \
        ASAN_OPTIONS="${ASAN_OPTIONS%%:log_path*}" UBSAN_OPTIONS="${UBSAN_OPTIONS%%:log_path*}" \
        sh tests/c/run_native.sh >"$OUT/ctest.log" 2>&1
    crc=$?
    set -e
    tail -3 "$OUT/ctest.log"
    echo "   C harness: rc=$crc in $(( $(date +%s) - t0 )) s"
    if [ $crc != 0 ] || ! grep -q " passed, 0 failed" "$OUT/ctest.log"; then
        tail -60 "$OUT/ctest.log"; rc=1
    fi
fi
[ $rc = 0 ] && echo "== sanitizers: clean" || echo "== sanitizers: FAILED"
exit $rc
