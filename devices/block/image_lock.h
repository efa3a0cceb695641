// Image locks that QEMU and qemu-img see, and that see theirs.
//
// QEMU's file-posix driver (block/file-posix.c, QEMU 7.2) marks what each
// open of an image file does with OFD byte-range locks (F_OFD_SETLK), all of
// them shared (F_RDLCK) and one byte long:
//   byte 100 + i is held while this open uses permission bit i.
//   byte 200 + i is held while this open does not let others use bit i.
// To take permission i, an open checks (F_OFD_GETLK) that no other open
// holds byte 200 + i. To refuse others permission i, it checks that no other
// open holds byte 100 + i. It takes its own bytes before it checks, so of two
// racing opens at least one sees the other. The bits are QEMU's BLK_PERM_*
// values (include/block/block-common.h, 7.2).
//
// OFD locks belong to the open file description: two opens of one file in
// one process conflict like two processes, an fd inherited across fork()
// shares its parent's locks, and the locks go when the last fd of that
// description closes (also when its process is killed).
#pragma once

#include <cstdint>
#include <string>

#include "vmm/base/result.h"

namespace forkvmm::block {

// QEMU's BLK_PERM_* bits.
enum : uint32_t {
  kPermConsistentRead = 1u << 0,
  kPermWrite = 1u << 1,
  kPermWriteUnchanged = 1u << 2,
  kPermResize = 1u << 3,
  kPermAll = 0xfu,
};

// Lock byte offsets, QEMU's RAW_LOCK_PERM_BASE and RAW_LOCK_SHARED_BASE.
inline constexpr int64_t kLockPermBase = 100;
inline constexpr int64_t kLockSharedBase = 200;

// The permissions one open of an image uses (`used`) and lets other opens
// use (`shared`), as sets of kPerm* bits.
struct ImagePermissions {
  uint32_t used = 0;
  uint32_t shared = kPermAll;
};

// The permissions forkvmm takes, as QEMU does for an image and its backing
// files: a writable open uses consistent read, write and resize (qcow2 grows
// its file); a read-only open uses consistent read. Neither lets others
// write or resize, so a qemu-img info without -U fails on an image forkvmm
// writes, and no other process can write a frozen layer under a running fork.
// `force_share` (qemu-img's -U, read-only opens only) lets others do anything.
ImagePermissions PermissionsFor(bool writable, bool force_share);

// QEMU's name for one permission bit ("consistent read", "write", ...).
const char* PermissionName(uint32_t bit);

// Takes the lock bytes for `permissions` on `fd`, then checks that no other
// open of the file conflicts. On a conflict, returns an error naming `path`
// with errno EAGAIN. The bytes already taken stay held until `fd` closes, so
// callers close it. On a file system without OFD locks (EINVAL, ENOTSUP),
// logs a warning once per process and returns Ok, as QEMU continues too.
Status LockImage(int fd, const std::string& path, ImagePermissions permissions);

// Takes the lock bytes for `permissions` on `fd` without checking, for a new
// fd of a file whose old fd holds the same or more bytes (a reopen). The old
// fd must stay open until this returns.
Status TransferImageLock(int fd, const std::string& path, ImagePermissions permissions);

// Returns the permissions that opens other than `fd` use and do not share,
// as F_OFD_GETLK reports each lock byte. For tests and diagnostics.
Result<ImagePermissions> ProbeOtherLocks(int fd, const std::string& path);

}  // namespace forkvmm::block
