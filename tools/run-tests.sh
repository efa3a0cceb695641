#!/usr/bin/env bash
# The forkvmm test command: installs what is missing, builds the guest kernel
# (cached by config hash outside the checkout) and forkvmm, then runs
#   1. unit, integration (test guests on real KVM) and qemu-img interop tests;
#   2. the same under AddressSanitizer and UndefinedBehaviorSanitizer;
#   3. the qcow2 fuzz target for a bounded time (clang/libFuzzer);
#   4. the end-to-end test on the real Linux guest (boot once, fork mid-boot).
# Tests that need /dev/kvm report "skipped: <reason>" where it is missing.
# Set FORKVMM_TESTS="unit integration img asan fuzz e2e" to run a subset.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
stages=${FORKVMM_TESTS:-"unit integration img asan fuzz e2e"}
want() { [[ " $stages " == *" $1 "* ]]; }
section() { printf '\n=== %s (%s)\n' "$1" "$(date -u +%H:%M:%S)"; }
failed=()
reports=()

section "host setup"
bash tools/setup-host.sh

section "guest kernel and root filesystem"
guest=$(bash guest-kernel/build.sh)
echo "guest build: $guest"

section "build"
FORKVMM_BUILD_DIR=$top/build bash tools/build.sh >/dev/null
./build/tools/forkvmm probe || true

labels=()
for label in unit integration img; do want "$label" && labels+=("$label"); done
if [[ ${#labels[@]} -gt 0 ]]; then
  regex=$(IFS='|'; echo "^(${labels[*]})$")
  section "tests: ${labels[*]}"
  reports+=("$top/build/ctest-main.xml")
  ctest --test-dir build -L "$regex" -j2 --output-on-failure --timeout 600 \
    --output-junit "${reports[-1]}" || failed+=("${labels[*]}")
fi

if want asan; then
  section "tests under AddressSanitizer and UBSan"
  FORKVMM_BUILD_DIR=$top/build-asan bash tools/build.sh -DFORKVMM_SANITIZE=ON \
    -DFORKVMM_BENCH=OFF -DCMAKE_BUILD_TYPE=Debug >/dev/null
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
    ctest --test-dir build-asan -L '^(unit|integration|img)$' -j2 --output-on-failure \
    --timeout 900 --output-junit "$top/build-asan/ctest-asan.xml" || failed+=(asan)
  reports+=("$top/build-asan/ctest-asan.xml")
fi

if want fuzz && [[ -f tests/fuzz/run_fuzz.sh ]]; then
  section "qcow2 fuzzing (bounded)"
  bash tests/fuzz/run_fuzz.sh 60 || failed+=(fuzz)
fi

if want e2e; then
  section "end-to-end on the Linux guest"
  # Verbose, so the boot and fork times and any skip reason are shown.
  reports+=("$top/build/ctest-e2e.xml")
  ctest --test-dir build -L '^e2e$' -V --output-junit "${reports[-1]}" || failed+=(e2e)
fi

section "summary"
if [[ ${#failed[@]} -gt 0 ]]; then
  # Repeat each failure here: CI shows only the end of this log.
  for report in "${reports[@]}"; do
    [[ -f $report ]] && python3 tools/ctest-failures.py "$report"
  done
  echo "FAILED: ${failed[*]}"
  exit 1
fi
echo "all requested test stages passed (skipped tests, if any, are listed above)"
