# Helpers shared by the guest image build scripts: messages on stderr, Debian
# package versions, and a content-addressed cache directory.
#
# A cache entry is <cache>/<kind>/<hash>/, where <hash> covers every input of
# the build. An entry is built in a private directory beside it and renamed
# into place only when complete, so a directory that exists is always whole.
# Builders of the same entry serialize on <cache>/<kind>/<hash>.lock (flock).
#
# Callers set script_name before sourcing this file.

log() {
  printf '%s: %s\n' "$script_name" "$*" >&2
}

die() {
  log "error: $*"
  exit 1
}

# Prints the installed version of Debian package $1, or exits naming it.
package_version() {
  dpkg-query -W -f='${Version}' "$1" 2>/dev/null ||
    die "package $1 is not installed; install it with apt-get install $1"
}

# Prints the first 16 hex digits of the SHA-256 of stdin.
short_hash() {
  sha256sum | cut -c1-16
}

# Takes the build lock of entry directory $1 on fd 9. The lock is held until
# the calling script exits, which closes fd 9.
cache_lock() {
  local entry=$1
  mkdir -p "$(dirname "$entry")" ||
    die "failed to create cache directory $(dirname "$entry"); set FORKVMM_CACHE to a writable directory"
  exec 9>"$entry.lock"
  if ! flock -n 9; then
    log "waiting for another build of $entry"
    flock 9
  fi
}

# Removes work directories of entry $1 left by a build that was killed. Call
# only while holding the entry's lock, so no live build owns them.
cache_remove_stale_work() {
  local entry=$1
  rm -rf "$entry".work.*
}

# Creates and prints a private work directory for entry $1.
cache_make_work() {
  mktemp -d "$1.work.XXXXXX"
}

# Publishes the finished directory $1 as entry $2 with one rename.
cache_publish() {
  mv -T "$1" "$2"
}
