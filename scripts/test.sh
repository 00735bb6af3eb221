#!/usr/bin/env bash
# Builds maskd and runs its whole test suite (CTest): the README's second
# set-up command, and what .ci/run calls.
#
#   scripts/test.sh                   Release build: every test; then an
#                                     ASan+UBSan build: every test but the
#                                     slow PyTorch parity ones
#   MASKD_SANITIZE=1 scripts/test.sh  the whole suite in the ASan+UBSan build
#   scripts/test.sh -L conformance    extra arguments go to ctest (both builds)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh --test

jobs=$(nproc)
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

run_suite() { # dir, cmake flags, ctest flags...
  local dir=$1 flags=$2
  shift 2
  # shellcheck disable=SC2086
  cmake -S . -B "$dir" $flags >/dev/null
  cmake --build "$dir" -j"$jobs"
  ctest --test-dir "$dir" --output-on-failure -j"$jobs" "$@"
}

sanitize="-DCMAKE_BUILD_TYPE=RelWithDebInfo -DMASKD_SANITIZE=ON"
if [[ "${MASKD_SANITIZE:-0}" == 1 ]]; then
  run_suite build-asan "$sanitize" "$@"
else
  run_suite build "-DCMAKE_BUILD_TYPE=Release" "$@"
  echo "== the same suite under AddressSanitizer + UBSan (parity: MASKD_SANITIZE=1) =="
  run_suite build-asan "$sanitize" -LE parity "$@"
fi
