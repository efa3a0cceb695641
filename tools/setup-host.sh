#!/usr/bin/env bash
# Installs the Debian 12 packages that building, testing and benchmarking
# forkvmm need. Safe to run again: it calls apt-get only for missing packages.
set -euo pipefail

packages=(
  # build
  build-essential cmake ninja-build pkg-config git
  liburing-dev libxxhash-dev libcli11-dev libfmt-dev nlohmann-json3-dev
  zlib1g-dev libzstd-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  # fuzzing and sanitizers
  clang libclang-rt-14-dev
  # guest kernel and root filesystem
  linux-source-6.1 flex bison bc libelf-dev libssl-dev cpio xz-utils busybox-static e2fsprogs
  # interop tests and benchmarks: qemu-img/qemu-io, and QEMU as the peer
  qemu-utils qemu-system-x86 python3 python3-matplotlib
)

missing=()
for package in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$package")
  fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
  echo "setup-host: all ${#packages[@]} packages are installed" >&2
  exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
  echo "setup-host: missing packages (${missing[*]}); run this script as root" >&2
  exit 1
fi
echo "setup-host: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
