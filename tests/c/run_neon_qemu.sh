#!/bin/sh
# Cross-compile tests/c/test_neon_vs_scalar.c for aarch64 and run it under
# qemu-aarch64 user-mode emulation: the NEON kernels against the scalar
# reference, bit for bit.  Skips (exit 0) when the cross compiler or qemu is absent
# (Debian: apt-get install gcc-aarch64-linux-gnu qemu-user).
# Also checks that the sources build for aarch64 with -O3 -pthread, and runs the
# thread pool's stress test (tests/c/test_pool.c) under qemu.
set -eu
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
CROSS_CC=${CROSS_CC:-aarch64-linux-gnu-gcc}
QEMU=${QEMU:-}
if [ -z "$QEMU" ]; then
    for q in qemu-aarch64-static qemu-aarch64; do
        if command -v "$q" >/dev/null 2>&1; then QEMU=$q; break; fi
    done
fi
if ! command -v "$CROSS_CC" >/dev/null 2>&1; then
    echo "SKIP: $CROSS_CC not found (apt-get install gcc-aarch64-linux-gnu)"
    exit 0
fi
if [ -z "$QEMU" ] || ! command -v "$QEMU" >/dev/null 2>&1; then
    echo "SKIP: qemu-aarch64 not found (apt-get install qemu-user)"
    exit 0
fi
# per checkout, so that two trees can run the harness at once
BUILD_DIR=${BUILD_DIR:-${TMPDIR:-/tmp}/quantcore-ctest-$(printf %s "$ROOT" | cksum | cut -d" " -f1)}
mkdir -p "$BUILD_DIR"
EXE="$BUILD_DIR/test_neon_vs_scalar_aarch64"
FLAGS="-std=gnu11 -O2 -ffp-contract=off -Wall -Wno-unused-function -Icsrc/include -Icsrc"
cd "$ROOT"
# every C source of the library (the x86 files compile to nothing on aarch64)
SRCS=$(find csrc -name '*.c' | LC_ALL=C sort | tr '\n' ' ')
# the library with -O3 -pthread, as setup.py builds it on aarch64: compile and link
# (set QC_RUN_O3=1 to run that build under qemu too)
# shellcheck disable=SC2086
$CROSS_CC $FLAGS -O3 -pthread -static -o "$EXE.o3" tests/c/test_neon_vs_scalar.c $SRCS -lm
echo "aarch64 -O3 -pthread build: ok"
if [ "${QC_RUN_O3:-0}" = 1 ]; then
    echo "running $EXE.o3 under $QEMU"
    "$QEMU" "$EXE.o3"
fi
echo "running the thread pool's stress test under $QEMU"
$CROSS_CC -std=gnu11 -O2 -Wall -pthread -Icsrc -static -o "$BUILD_DIR/test_pool_aarch64" \
    tests/c/test_pool.c csrc/pool.c
# (no fork case: qemu-user aborts in a child forked from a threaded guest)
QC_POOL_TEST_NO_FORK=1 "$QEMU" "$BUILD_DIR/test_pool_aarch64"
# shellcheck disable=SC2086
$CROSS_CC $FLAGS ${CFLAGS:-} -static -o "$EXE" tests/c/test_neon_vs_scalar.c $SRCS -lm
echo "running $EXE under $QEMU"
"$QEMU" "$EXE"
# qemu's default CPU has the dot-product extension, so the run above checked the
# SDOT linear kernels; a Cortex-A53 (ARMv8.0) model runs the baseline ones
echo "running the linear kernels on $QEMU -cpu cortex-a53 (no dot product)"
QC_TEST_SECTIONS=linear exec "$QEMU" -cpu cortex-a53 "$EXE"
