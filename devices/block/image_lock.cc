#include "devices/block/image_lock.h"

#include <fcntl.h>
#include <fmt/core.h>

#include <atomic>
#include <cerrno>
#include <cstring>

#include "vmm/base/log.h"

namespace forkvmm::block {
namespace {

constexpr int kPermissionBits = 4;

bool LockingUnsupported(int errnum) { return errnum == EINVAL || errnum == ENOTSUP; }

void WarnLockingUnsupported(const std::string& path, int errnum) {
  static std::atomic<bool> warned{false};
  if (warned.exchange(true)) return;
  LOG_WARNING("{}: the file system does not support OFD locks ({}); images are used without "
              "locks, so QEMU and other forkvmm processes cannot see which are in use",
              path, std::strerror(errnum));
}

// Takes a shared (F_RDLCK) lock on one byte. Returns 0 or the errno.
int LockByte(int fd, int64_t offset) {
  struct flock lock {};
  lock.l_type = F_RDLCK;
  lock.l_whence = SEEK_SET;
  lock.l_start = offset;
  lock.l_len = 1;
  // OFD locks need l_pid 0, which the zero-initialized struct has.
  if (::fcntl(fd, F_OFD_SETLK, &lock) != 0) return errno;
  return 0;
}

// Sets `held` when an open other than `fd` holds a lock on the byte, and
// returns 0 or the errno. F_OFD_GETLK ignores the locks of `fd`'s own open
// file description.
int TestByte(int fd, int64_t offset, bool& held) {
  struct flock lock {};
  lock.l_type = F_WRLCK;
  lock.l_whence = SEEK_SET;
  lock.l_start = offset;
  lock.l_len = 1;
  if (::fcntl(fd, F_OFD_GETLK, &lock) != 0) return errno;
  held = lock.l_type != F_UNLCK;
  return 0;
}

Error LockError(const std::string& path, std::string_view operation, int64_t offset,
                int errnum) {
  return Error(fmt::format("{}: {} lock byte {}: {}", path, operation, offset,
                           std::strerror(errnum)),
               errnum);
}

// Takes the bytes for `permissions`. Where the file system has no OFD locks,
// stores the errno in `unsupported` and returns Ok.
Status TakeBytes(int fd, const std::string& path, ImagePermissions permissions,
                 int& unsupported) {
  for (int i = 0; i < kPermissionBits; ++i) {
    const uint32_t bit = 1u << i;
    const bool used = (permissions.used & bit) != 0;
    const bool unshared = (permissions.shared & bit) == 0;
    for (int64_t offset : {used ? kLockPermBase + i : -1, unshared ? kLockSharedBase + i : -1}) {
      if (offset < 0) continue;
      int errnum = LockByte(fd, offset);
      if (errnum == 0) continue;
      if (LockingUnsupported(errnum)) {
        unsupported = errnum;
        return Ok();
      }
      return LockError(path, "taking", offset, errnum);
    }
  }
  return Ok();
}

// Fails when another open holds a lock on byte `offset`. `conflict` names the
// lock in the message.
Status CheckByte(int fd, const std::string& path, int64_t offset, std::string_view conflict) {
  bool held = false;
  int errnum = TestByte(fd, offset, held);
  if (errnum != 0) return LockError(path, "testing", offset, errnum);
  if (!held) return Ok();
  return Error(fmt::format("{}: failed to get {} lock: the image is in use by another process "
                           "(forkvmm or QEMU)",
                           path, conflict),
               EAGAIN);
}

}  // namespace

ImagePermissions PermissionsFor(bool writable, bool force_share) {
  if (writable) {
    return {.used = kPermConsistentRead | kPermWrite | kPermResize,
            .shared = kPermConsistentRead | kPermWriteUnchanged};
  }
  if (force_share) return {.used = kPermConsistentRead, .shared = kPermAll};
  return {.used = kPermConsistentRead, .shared = kPermConsistentRead | kPermWriteUnchanged};
}

const char* PermissionName(uint32_t bit) {
  switch (bit) {
    case kPermConsistentRead:
      return "consistent read";
    case kPermWrite:
      return "write";
    case kPermWriteUnchanged:
      return "write unchanged";
    case kPermResize:
      return "resize";
    default:
      return "unknown";
  }
}

Status LockImage(int fd, const std::string& path, ImagePermissions permissions) {
  int unsupported = 0;
  TRY(TakeBytes(fd, path, permissions, unsupported));
  if (unsupported != 0) {
    WarnLockingUnsupported(path, unsupported);
    return Ok();
  }
  // The same order as QEMU: first what this open uses, then what it does
  // not share, so the message names the first conflicting permission.
  for (int i = 0; i < kPermissionBits; ++i) {
    const uint32_t bit = 1u << i;
    if ((permissions.used & bit) == 0) continue;
    TRY(CheckByte(fd, path, kLockSharedBase + i, fmt::format("\"{}\"", PermissionName(bit))));
  }
  for (int i = 0; i < kPermissionBits; ++i) {
    const uint32_t bit = 1u << i;
    if ((permissions.shared & bit) != 0) continue;
    TRY(CheckByte(fd, path, kLockPermBase + i,
                  fmt::format("shared \"{}\"", PermissionName(bit))));
  }
  return Ok();
}

Status TransferImageLock(int fd, const std::string& path, ImagePermissions permissions) {
  int unsupported = 0;
  TRY(TakeBytes(fd, path, permissions, unsupported));
  if (unsupported != 0) WarnLockingUnsupported(path, unsupported);
  return Ok();
}

Result<ImagePermissions> ProbeOtherLocks(int fd, const std::string& path) {
  ImagePermissions others{.used = 0, .shared = kPermAll};
  for (int i = 0; i < kPermissionBits; ++i) {
    const uint32_t bit = 1u << i;
    bool held = false;
    if (int errnum = TestByte(fd, kLockPermBase + i, held); errnum != 0) {
      return LockError(path, "testing", kLockPermBase + i, errnum);
    }
    if (held) others.used |= bit;
    if (int errnum = TestByte(fd, kLockSharedBase + i, held); errnum != 0) {
      return LockError(path, "testing", kLockSharedBase + i, errnum);
    }
    if (held) others.shared &= ~bit;
  }
  return others;
}

}  // namespace forkvmm::block
