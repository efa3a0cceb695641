#!/usr/bin/env bash
# Builds forkvmm into build/ (or $FORKVMM_BUILD_DIR) and prints the path of
# the forkvmm binary as its last line. Extra arguments go to cmake.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
build=${FORKVMM_BUILD_DIR:-$top/build}
cmake -S "$top" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo "$@" >&2
ninja -C "$build" -j"$(nproc)" >&2
echo "$build/tools/forkvmm"
