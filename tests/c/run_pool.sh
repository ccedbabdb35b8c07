#!/bin/sh
# Build tests/c/test_pool.c with csrc/pool.c and run it: as built for the
# package, with workers that sleep at once (QUANTCORE_SPIN_US=0), with condition
# variables instead of futexes, as the serial pool, and under ThreadSanitizer
# where the compiler has it (no fork case there: TSan does not
# follow fork() from a threaded process).
# Usage: tests/c/run_pool.sh   (CC and BUILD_DIR may be overridden)
set -eu
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
CC=${CC:-cc}
# per checkout, so that two trees can run the harness at once
BUILD_DIR=${BUILD_DIR:-${TMPDIR:-/tmp}/quantcore-ctest-$(printf %s "$ROOT" | cksum | cut -d" " -f1)}
mkdir -p "$BUILD_DIR"
cd "$ROOT"
EXE="$BUILD_DIR/test_pool"
$CC -std=gnu11 -O2 -Wall -pthread -Icsrc -o "$EXE" tests/c/test_pool.c csrc/pool.c
echo "== default spin"
"$EXE"
echo "== QUANTCORE_SPIN_US=0"
QUANTCORE_SPIN_US=0 "$EXE"
echo "== condition variables instead of futexes (as on macOS and the BSDs)"
$CC -std=gnu11 -O2 -Wall -pthread -DQC_POOL_NO_FUTEX -Icsrc -o "$EXE.cv" tests/c/test_pool.c csrc/pool.c
QUANTCORE_SPIN_US=0 "$EXE.cv"
echo "== the serial pool (builds without POSIX threads)"
$CC -std=gnu11 -O2 -Wall -pthread -DQC_POOL_SERIAL -Icsrc -o "$EXE.serial" tests/c/test_pool.c csrc/pool.c
"$EXE.serial"
if $CC -fsanitize=thread -x c -o "$BUILD_DIR/tsan_probe" - <<'C' >/dev/null 2>&1
int main(void) { return 0; }
C
then
    echo "== ThreadSanitizer"
    $CC -std=gnu11 -O1 -g -Wall -pthread -fsanitize=thread -Icsrc -o "$EXE.tsan" \
        tests/c/test_pool.c csrc/pool.c
    QC_POOL_TEST_NO_FORK=1 TSAN_OPTIONS="halt_on_error=1 exitcode=66" "$EXE.tsan"
    echo "== ThreadSanitizer, condition variables"
    $CC -std=gnu11 -O1 -g -Wall -pthread -fsanitize=thread -DQC_POOL_NO_FUTEX -Icsrc \
        -o "$EXE.tsan.cv" tests/c/test_pool.c csrc/pool.c
    QC_POOL_TEST_NO_FORK=1 QUANTCORE_SPIN_US=0 TSAN_OPTIONS="halt_on_error=1 exitcode=66" \
        "$EXE.tsan.cv"
else
    echo "ThreadSanitizer: not available to $CC (skipped)"
fi
