#!/bin/sh
# Builds the qcow2 fuzzer with clang, libFuzzer, AddressSanitizer and
# UndefinedBehaviorSanitizer. Then runs it for a bounded time on a seed
# corpus that qemu-img generates at each run.
#
# Usage: tests/fuzz/run_fuzz.sh [SECONDS]   (default 60)
# Environment: FORKVMM_FUZZ_BUILD  build directory (default build-fuzz)
#              FORKVMM_FUZZ_JOBS   parallel compile jobs (default 2)
# A crash leaves its input as crash-* in the build directory and exits non-zero.
set -eu

seconds=${1:-60}
root=$(cd "$(dirname "$0")/../.." && pwd)
build=${FORKVMM_FUZZ_BUILD:-$root/build-fuzz}
jobs=${FORKVMM_FUZZ_JOBS:-2}
sanitizers="-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined"

cmake -S "$root" -B "$build" -G Ninja \
  -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_C_FLAGS="$sanitizers" -DCMAKE_CXX_FLAGS="$sanitizers" \
  -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined" \
  -DFORKVMM_FUZZ=ON -DFORKVMM_BENCH=OFF -DFORKVMM_WERROR=OFF >/dev/null
ninja -C "$build" -j "$jobs" qcow2_open_fuzzer

corpus=$build/fuzz-corpus
seeds=$build/fuzz-seeds
mkdir -p "$corpus" "$seeds"
if command -v qemu-img >/dev/null 2>&1 && command -v qemu-io >/dev/null 2>&1; then
  # Small images of each kind: versions, cluster sizes, refcount widths,
  # zero clusters, compressed clusters, a backing file name and format.
  rm -f "$seeds"/*
  for cluster in 512 1024 4096; do
    for compat in 0.10 1.1; do
      seed=$seeds/c$cluster-$compat.qcow2
      qemu-img create -q -f qcow2 -o cluster_size=$cluster,compat=$compat "$seed" 256K
      qemu-io -f qcow2 -c "write -P 0x11 0 3k" -c "write -z 8k 2k" -c "write -P 0x22 200k 1k" \
        "$seed" >/dev/null
    done
  done
  qemu-img create -q -f qcow2 -o cluster_size=512,refcount_bits=1 "$seeds/r1.qcow2" 64K
  qemu-img create -q -f qcow2 -o cluster_size=512,refcount_bits=64 "$seeds/r64.qcow2" 64K
  qemu-img create -q -f qcow2 -o cluster_size=512,lazy_refcounts=on "$seeds/lazy.qcow2" 64K
  qemu-img create -q -u -f qcow2 -o cluster_size=512 -b base.raw -F raw "$seeds/backing.qcow2" 64K
  head -c 65536 /dev/zero | tr '\0' 'a' > "$seeds/src.raw"
  for type in zlib zstd; do
    qemu-img convert -c -O qcow2 -o cluster_size=4096,compression_type=$type \
      "$seeds/src.raw" "$seeds/compressed-$type.qcow2"
  done
  rm -f "$seeds/src.raw"
  cp "$seeds"/*.qcow2 "$corpus"/
else
  echo "run_fuzz.sh: qemu-img not found; fuzzing without a seed corpus" >&2
fi

cd "$build"
exec "$build/tests/fuzz/qcow2_open_fuzzer" -max_total_time="$seconds" -max_len=65536 \
  -timeout=10 -rss_limit_mb=2048 "$corpus"
