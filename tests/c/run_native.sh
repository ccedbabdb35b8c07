#!/bin/sh
# Build tests/c/test_neon_vs_scalar.c for this machine and run it: on x86-64 it
# compares the AVX2 kernels with the scalar reference, on aarch64 NEON.
# Usage: tests/c/run_native.sh   (CC, CFLAGS and BUILD_DIR may be overridden)
set -eu
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
CC=${CC:-cc}
# per checkout, so that two trees can run the harness at once
BUILD_DIR=${BUILD_DIR:-${TMPDIR:-/tmp}/quantcore-ctest-$(printf %s "$ROOT" | cksum | cut -d" " -f1)}
mkdir -p "$BUILD_DIR"
EXE="$BUILD_DIR/test_simd_vs_scalar_native"
cd "$ROOT"
# every C source of the library (the ISA files of other machines compile to nothing)
SRCS=$(find csrc -name '*.c' | LC_ALL=C sort | tr '\n' ' ')
# -ffp-contract=off as in setup.py: the scalar reference assumes no fused multiply-adds.
# shellcheck disable=SC2086
$CC -std=gnu11 -O2 -pthread -ffp-contract=off -Wall -Wno-unused-function ${CFLAGS:-} \
    -Icsrc/include -Icsrc -o "$EXE" \
    tests/c/test_neon_vs_scalar.c $SRCS -lm
exec "$EXE"
