#!/bin/bash
# Builds the forkvmm guest userspace from busybox-static in two forms with the
# same content:
#   initramfs.cpio  an uncompressed newc cpio archive, for initrd boots. It is
#                   not compressed because decompressing it is guest CPU work.
#   rootfs.ext4     an ext4 image for root=/dev/vda boots. Treat it as a
#                   read-only base and give each VM a qcow2 overlay on it.
# Both contain busybox with a link per applet, and the script init from this
# folder as /init, with /sbin/init linked to it.
#
# Usage: build-initramfs.sh   (as root: it creates device nodes and root-owned
# files)
#
# The result is cached in ${FORKVMM_CACHE:-/var/cache/forkvmm}/rootfs/<hash>/
# where <hash> covers init, this script, lib/cache.sh, the busybox binary and
# the versions of busybox-static, cpio and e2fsprogs. A run whose entry exists
# does no work. Concurrent runs are safe.
#
# Output: progress on stderr. On stdout the paths of initramfs.cpio and
# rootfs.ext4, then the entry directory as the last line.
set -euo pipefail

script_name=build-initramfs.sh
script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$script_dir/lib/cache.sh"

busybox=/bin/busybox
cache_root=${FORKVMM_CACHE:-/var/cache/forkvmm}
# Busybox takes 2 MiB; the rest is room for what the guest writes.
rootfs_size=64M
# Fixed file times make the archive depend only on the inputs.
file_time=@0

# Prints every input that changes the output, one per line. File paths are
# relative to this folder so that each checkout computes the same hash.
print_inputs() {
  local package
  for package in busybox-static cpio e2fsprogs; do
    echo "package $package $(package_version "$package")"
  done
  sha256sum "$busybox"
  (cd "$script_dir" && sha256sum build-initramfs.sh lib/cache.sh init)
}

# Fills directory $1 with the guest's files.
populate_tree() {
  local tree=$1 applet
  mkdir -p "$tree"/{bin,sbin,usr/bin,usr/sbin,etc,dev,proc,sys,tmp,run,root,mnt,var/log}
  install -m 0755 "$busybox" "$tree/bin/busybox"
  while read -r applet; do
    [[ -e $tree/$applet || -L $tree/$applet ]] || ln -s /bin/busybox "$tree/$applet"
  done < <("$busybox" --list-full)

  install -m 0755 "$script_dir/init" "$tree/init"
  # The kernel runs /sbin/init from a disk root unless init= names another.
  ln -sfn ../init "$tree/sbin/init"

  echo 'root:x:0:0:root:/root:/bin/sh' >"$tree/etc/passwd"
  echo 'root:x:0:' >"$tree/etc/group"
  echo "PS1='forkvmm:\\w\\\$ '" >"$tree/etc/profile"
  # The kernel opens /dev/console for init before anything mounts /dev.
  mknod -m 0600 "$tree/dev/console" c 5 1
  mknod -m 0666 "$tree/dev/null" c 1 3
  chmod 1777 "$tree/tmp"
  chmod 0700 "$tree/root"
  find "$tree" -exec touch -h -d "$file_time" {} +
}

# Writes tree $1 as an uncompressed newc archive $2, in sorted name order.
write_cpio() {
  (cd "$1" && find . -mindepth 1 -print0 | LC_ALL=C sort -z |
    cpio --null --create --format=newc --owner=0:0 --reproducible --quiet) >"$2"
}

# Writes tree $1 as ext4 image $2. mke2fs would pick 1 KiB blocks for an
# image this small; 4 KiB blocks match the guest page size.
write_ext4() {
  mkfs.ext4 -q -F -b 4096 -L forkvmm-root -E root_owner=0:0 -d "$1" "$2" "$rootfs_size" >&2 ||
    die "mkfs.ext4 failed to build $2"
}

build_in() {
  local work=$1
  local tree=$work/root out=$work/out
  mkdir "$out"
  print_inputs >"$out/inputs"
  log "populating the tree from $busybox"
  populate_tree "$tree"
  log "writing initramfs.cpio"
  write_cpio "$tree" "$out/initramfs.cpio"
  log "writing rootfs.ext4 ($rootfs_size)"
  write_ext4 "$tree" "$out/rootfs.ext4"
  # Read-only as a reminder: VMs write to overlays, never to the base.
  chmod 0444 "$out/initramfs.cpio" "$out/rootfs.ext4"
}

print_result() {
  printf '%s\n' "$1/initramfs.cpio" "$1/rootfs.ext4" "$1"
}

main() {
  [[ $(id -u) == 0 ]] || die "must run as root, to create device nodes and root-owned files"
  [[ -x $busybox ]] || die "$busybox not found; install it with apt-get install busybox-static"
  local hash entry
  hash=$(print_inputs | short_hash)
  entry=$cache_root/rootfs/$hash

  if [[ -d $entry ]]; then
    log "cached: $entry"
    print_result "$entry"
    return
  fi

  cache_lock "$entry"
  if [[ -d $entry ]]; then
    log "built by a concurrent run: $entry"
    print_result "$entry"
    return
  fi
  cache_remove_stale_work "$entry"
  # Global, because the EXIT trap runs after main has returned.
  work=$(cache_make_work "$entry")
  trap 'rm -rf "$work"' EXIT

  build_in "$work"
  cache_publish "$work/out" "$entry"
  log "built: $entry"
  print_result "$entry"
}

main "$@"
