#!/bin/bash
# Builds the complete forkvmm guest and points
# ${FORKVMM_CACHE:-/var/cache/forkvmm}/guest/current at a directory containing
#   vmlinux, bzImage          from build-kernel.sh
#   initramfs.cpio, rootfs.ext4  from build-initramfs.sh
#   cmdline                   the recommended kernel command line (one line)
# The forkvmm VMM looks there by default. The image files are symbolic links
# into the kernel and rootfs cache entries.
#
# Usage: build.sh   (as root, see build-initramfs.sh)
#
# Output: progress on stderr; on stdout the path of the current link as the
# last line. Each guest/<hash> directory is immutable, and current is
# replaced with one rename, so a VMM that opens current/vmlinux never reads a
# half-built guest.
set -euo pipefail

script_name=build.sh
script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$script_dir/lib/cache.sh"

cache_root=${FORKVMM_CACHE:-/var/cache/forkvmm}

# The recommended command line for the forkvmm VMM, which adds the
# virtio_mmio.device= parameters of the devices it creates and, on hosts
# without hardware virtualization, the parameters of its quirks profile
# (`forkvmm probe --json` prints them). For a disk root, add
# "root=/dev/vda rw" and drop the initramfs.
#   console=ttyS0       the 16550 UART at 0x3f8 is the console.
#   reboot=k            restart through the keyboard controller, port 0x64,
#                       which the VMM turns into the end of the VM. The kernel
#                       has no ACPI, so this is its only way out apart from a
#                       triple fault.
#   panic=-1            restart at once on a panic, so a failed boot ends the
#                       VM instead of hanging it.
#   skip_int3_selftest  skip the boot-time INT3 self-test (patches/0001),
#                       which fails where guest kernel code is emulated
#                       (kvm_pvm). Nothing else depends on that test.
recommended_cmdline='console=ttyS0 reboot=k panic=-1 skip_int3_selftest'

# Prints the output directory of build script $1: the last line of its stdout.
run_builder() {
  local dir
  dir=$("$script_dir/$1" | tail -n 1) || die "$1 failed"
  [[ -d $dir ]] || die "$1 printed '$dir', which is not a directory"
  echo "$dir"
}

# Creates guest entry $1 from kernel entry $2 and rootfs entry $3.
populate_guest() {
  local guest=$1 kernel=$2 rootfs=$3 file
  for file in vmlinux bzImage; do
    ln -s "../../kernel/$(basename "$kernel")/$file" "$guest/$file"
  done
  for file in initramfs.cpio rootfs.ext4; do
    ln -s "../../rootfs/$(basename "$rootfs")/$file" "$guest/$file"
  done
  echo "$recommended_cmdline" >"$guest/cmdline"
}

# Points link $1 at target $2, replacing the link with one rename.
replace_link() {
  local temporary=$1.new.$$
  ln -sfn "$2" "$temporary"
  mv -T "$temporary" "$1"
}

main() {
  local kernel rootfs hash entry
  kernel=$(run_builder build-kernel.sh)
  rootfs=$(run_builder build-initramfs.sh)
  # Both entries live in this cache, because the links are relative to it.
  [[ $kernel == "$cache_root/kernel/"* && $rootfs == "$cache_root/rootfs/"* ]] ||
    die "builders wrote outside $cache_root: $kernel, $rootfs"

  hash=$( {
    basename "$kernel"
    basename "$rootfs"
    (cd "$script_dir" && sha256sum build.sh)
  } | short_hash)
  entry=$cache_root/guest/$hash

  cache_lock "$entry"
  if [[ ! -d $entry ]]; then
    cache_remove_stale_work "$entry"
    # Global, because the EXIT trap runs after main has returned.
    work=$(cache_make_work "$entry")
    trap 'rm -rf "$work"' EXIT
    populate_guest "$work" "$kernel" "$rootfs"
    chmod 0755 "$work"
    cache_publish "$work" "$entry"
  fi
  replace_link "$cache_root/guest/current" "$hash"
  log "current -> $entry"
  echo "$cache_root/guest/current"
}

main "$@"
