// Where the project's own guest build (guest-kernel/build.sh) is found.
#pragma once

#include <string>

namespace forkvmm::cli {

// The directory with vmlinux, initramfs.cpio, rootfs.ext4 and cmdline:
// $FORKVMM_CACHE/guest/current, with /var/cache/forkvmm as the default cache.
std::string DefaultGuestDirectory();

// Returns the contents of `path` without trailing whitespace, or "" if it
// cannot be read.
std::string ReadTrimmedFile(const std::string& path);

}  // namespace forkvmm::cli
