#!/bin/bash
# Builds what the end-to-end benchmarks need in build-bench/ and runs them,
# the boot benchmark last. On hosts without hardware virtualization a Linux
# boot takes minutes, so the boot benchmark's default of 3 runs per VMM and
# configuration takes an hour or more there.
#
# Usage: bench/run.sh [setup|fork|disk|boot]...   (default: setup fork disk boot)
#   setup  kvm_setup_bench: the KVM calls of a fork child's VM rebuild
#   fork   fork_bench.py: fork latency and memory against QEMU's migrate path
#   disk   disk_bench.py: qcow2 I/O against qemu-img bench
#   boot   boot_bench.py: Linux boot time against QEMU microvm
# Results go to bench/results/ (JSON, and fork.png). Extra arguments for the
# scripts go in FORK_BENCH_ARGS, DISK_BENCH_ARGS and BOOT_BENCH_ARGS.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
build=${BUILD_DIR:-build-bench}
# Debian's interpreter, which has python3-matplotlib for the plot.
python=/usr/bin/python3

for package in qemu-system-x86 qemu-utils python3-matplotlib; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'ok installed'; then
    echo "run.sh: installing $package" >&2
    apt-get install -y "$package" >&2
  fi
done

cmake -S . -B "$build" -G Ninja >/dev/null
ninja -C "$build" -j2 forkvmm forkvmm_bench_guests kvm_setup_bench qcow2_io_bench

benchmarks=("$@")
[[ ${#benchmarks[@]} -gt 0 ]] || benchmarks=(setup fork disk boot)
mkdir -p bench/results
for benchmark in "${benchmarks[@]}"; do
  case $benchmark in
    setup)
      {
        echo "# commit $(git rev-parse --short HEAD), $(date -u +%Y-%m-%dT%H:%M:%SZ)," \
          "$(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
        for args in "--mem-mib 128" "--mem-mib 512" "--mem-mib 2048" "--mem-mib 512 --no-hugepages"; do
          # shellcheck disable=SC2086
          "$build/bench/kvm_setup_bench" $args --runs 30
        done
      } | tee bench/results/kvm_setup.txt
      ;;
    fork)
      # shellcheck disable=SC2086
      "$python" bench/fork_bench.py --forkvmm "$build/tools/forkvmm" \
        --guest "$build/bench/guests/dirty.elf" ${FORK_BENCH_ARGS:-}
      ;;
    disk)
      # shellcheck disable=SC2086
      "$python" bench/disk_bench.py --qcow2-io-bench "$build/bench/qcow2_io_bench" \
        ${DISK_BENCH_ARGS:-}
      ;;
    boot)
      # shellcheck disable=SC2086
      "$python" bench/boot_bench.py --forkvmm "$build/tools/forkvmm" \
        --cpuid-guest "$build/bench/guests/cpuid.elf" ${BOOT_BENCH_ARGS:-}
      ;;
    *)
      echo "run.sh: unknown benchmark '$benchmark'; expected setup, fork, disk or boot" >&2
      exit 2
      ;;
  esac
done
