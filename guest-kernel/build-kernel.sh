#!/bin/bash
# Builds the forkvmm guest kernel from Debian's linux-source-6.1: an
# uncompressed ELF vmlinux (the default, because decompressing a bzImage is
# guest CPU work) and a bzImage for loaders that need one.
#
# Usage: build-kernel.sh
#
# Steps: extract /usr/src/linux-source-6.1.tar.xz, apply patches/*.patch in
# name order, run `make tinyconfig`, merge config/forkvmm.config, check that
# every line of the fragment reached the final .config, build.
#
# The result is cached in ${FORKVMM_CACHE:-/var/cache/forkvmm}/kernel/<hash>/
# where <hash> covers the fragment, the patches, this script, lib/cache.sh,
# the linux-source-6.1 package version and the gcc version. A run whose entry
# exists does no work. Concurrent runs are safe: one builds, the others wait
# on its lock and reuse the result.
#
# Environment:
#   FORKVMM_CACHE       cache root (default /var/cache/forkvmm)
#   FORKVMM_BUILD_JOBS  parallel compile jobs (default: number of CPUs)
#
# Output: progress on stderr. On stdout the paths of vmlinux and bzImage,
# then the entry directory as the last line. The entry also contains config
# (the final .config), System.map, inputs (what the hash covers) and
# build.log.
set -euo pipefail
shopt -s nullglob

script_name=build-kernel.sh
script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$script_dir/lib/cache.sh"

source_package=linux-source-6.1
source_tarball=/usr/src/linux-source-6.1.tar.xz
source_subdir=linux-source-6.1
fragment=config/forkvmm.config
cache_root=${FORKVMM_CACHE:-/var/cache/forkvmm}
jobs=${FORKVMM_BUILD_JOBS:-$(nproc)}
make_vars=(ARCH=x86_64 KBUILD_BUILD_USER=forkvmm KBUILD_BUILD_HOST=forkvmm)

# Prints every input that changes the kernel, one per line. File paths are
# relative to this folder so that each checkout computes the same hash.
print_inputs() {
  echo "package $source_package $(package_version "$source_package")"
  echo "compiler $(gcc --version | head -n 1)"
  (cd "$script_dir" && sha256sum build-kernel.sh lib/cache.sh "$fragment" patches/*.patch)
}

# Exits unless each CONFIG_ line and "is not set" line of the fragment is in
# .config of tree $1. Kconfig drops a value silently when its dependencies
# are not met, so a typo or a missing dependency would otherwise go unnoticed.
check_fragment_applied() {
  local config=$1/.config line symbol missing=0
  while read -r line; do
    case $line in
      CONFIG_*=*)
        grep -qxF -- "$line" "$config" && continue
        symbol=${line%%=*}
        ;;
      "# CONFIG_"*" is not set")
        symbol=${line#\# }
        symbol=${symbol%% *}
        grep -q "^$symbol=" "$config" || continue
        ;;
      *) continue ;;
    esac
    log "fragment line not in the final .config: $line" \
      "(found: $(grep -E "^(# )?$symbol[= ]" "$config" || echo nothing))"
    missing=1
  done <"$script_dir/$fragment"
  [[ $missing == 0 ]] || die "$fragment does not apply to $source_package; fix the lines above"
}

# Prints the last 40 lines of log $1, which is deleted with the work
# directory, then exits with message $2.
die_with_log() {
  tail -n 40 "$1" >&2
  die "$2"
}

# Configures tree $1, appending make output to log $2.
configure_tree() {
  local tree=$1 build_log=$2
  make -C "$tree" "${make_vars[@]}" tinyconfig >>"$build_log" 2>&1 ||
    die_with_log "$build_log" "make tinyconfig failed; the last lines of its log are above"
  (cd "$tree" && ARCH=x86_64 scripts/kconfig/merge_config.sh -m .config \
    "$script_dir/$fragment") >>"$build_log" 2>&1 ||
    die_with_log "$build_log" "merge_config.sh failed; the last lines of its log are above"
  make -C "$tree" "${make_vars[@]}" olddefconfig >>"$build_log" 2>&1 ||
    die_with_log "$build_log" "make olddefconfig failed; the last lines of its log are above"
  check_fragment_applied "$tree"
}

# Builds the kernel in work directory $1 and leaves the files in $1/out.
build_in() {
  local work=$1
  local tree=$work/$source_subdir out=$work/out
  local build_log=$out/build.log patch
  mkdir "$out"
  print_inputs >"$out/inputs"

  log "extracting $source_tarball"
  tar -xf "$source_tarball" -C "$work"
  for patch in "$script_dir"/patches/*.patch; do
    log "applying patches/$(basename "$patch")"
    patch -d "$tree" -p1 --batch --forward --quiet <"$patch" ||
      die "patches/$(basename "$patch") does not apply to $source_package"
  done

  log "configuring (tinyconfig + $fragment)"
  configure_tree "$tree" "$build_log"

  log "compiling vmlinux and bzImage with $jobs jobs"
  make -C "$tree" "${make_vars[@]}" -j"$jobs" vmlinux bzImage >>"$build_log" 2>&1 ||
    die_with_log "$build_log" "kernel build failed; the last lines of its log are above"

  cp "$tree/vmlinux" "$tree/arch/x86/boot/bzImage" "$tree/System.map" "$out/"
  cp "$tree/.config" "$out/config"
}

print_result() {
  printf '%s\n' "$1/vmlinux" "$1/bzImage" "$1"
}

main() {
  [[ -r $source_tarball ]] ||
    die "$source_tarball not found; install it with apt-get install $source_package"
  local hash entry started
  hash=$(print_inputs | short_hash)
  entry=$cache_root/kernel/$hash

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

  started=$SECONDS
  build_in "$work"
  cache_publish "$work/out" "$entry"
  log "built in $((SECONDS - started)) s: $entry"
  print_result "$entry"
}

main "$@"
