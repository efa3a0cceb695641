#include "devices/block/image_file.h"

#include <fcntl.h>
#include <fmt/core.h>
#include <linux/falloc.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <vector>

#include "devices/block/image_lock.h"

namespace forkvmm::block {

Result<ImageFile> ImageFile::Open(const std::string& path, bool writable, bool force_share) {
  if (writable && force_share) {
    return Error(fmt::format("{}: force-share is only for read-only opens", path), EINVAL);
  }
  int flags = (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC;
  UniqueFd fd(::open(path.c_str(), flags));
  if (!fd.valid()) {
    int errnum = errno;
    return Error(fmt::format("{}: cannot open {}: {}", path, writable ? "read-write" : "read-only",
                             std::strerror(errnum)),
                 errnum);
  }
  TRY(LockImage(fd.get(), path, PermissionsFor(writable, force_share)));
  return ImageFile(path, std::move(fd), writable);
}

Result<ImageFile> ImageFile::Create(const std::string& path, CreateMode mode) {
  // O_TRUNC would empty an image that another process uses before the lock
  // check could fail, so an existing file is truncated after locking.
  int flags = O_RDWR | O_CREAT | O_CLOEXEC;
  if (mode == CreateMode::kExclusive) flags |= O_EXCL;
  UniqueFd fd(::open(path.c_str(), flags, 0644));
  if (!fd.valid()) {
    int errnum = errno;
    return Error(fmt::format("{}: cannot create: {}", path, std::strerror(errnum)), errnum);
  }
  TRY(LockImage(fd.get(), path, PermissionsFor(/*writable=*/true, /*force_share=*/false)));
  ImageFile file(path, std::move(fd), true);
  if (mode == CreateMode::kTruncate) TRY(file.Truncate(0));
  return file;
}

Result<ImageFile> ImageFile::ReopenReadOnly() const {
  UniqueFd fd(::open(path_.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return IoError("cannot reopen read-only", errno);
  TRY(TransferImageLock(fd.get(), path_, PermissionsFor(/*writable=*/false, false)));
  return ImageFile(path_, std::move(fd), false);
}

Error ImageFile::IoError(std::string_view what, int errnum) const {
  return Error(fmt::format("{}: {}: {}", path_, what, std::strerror(errnum)), errnum);
}

Result<uint64_t> ImageFile::Size() const {
  off_t end = ::lseek(fd_.get(), 0, SEEK_END);
  if (end < 0) return IoError("finding the file size", errno);
  return static_cast<uint64_t>(end);
}

Result<struct stat> ImageFile::Stat() const {
  struct stat st {};
  if (::fstat(fd_.get(), &st) != 0) return IoError("fstat", errno);
  return st;
}

namespace {

// Reads until `out` is full or the file ends; returns the bytes read.
Result<size_t> ReadUpTo(const ImageFile& file, uint64_t offset, std::span<uint8_t> out) {
  size_t done = 0;
  while (done < out.size()) {
    ssize_t n = ::pread(file.fd(), out.data() + done, out.size() - done,
                        static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return file.IoError(fmt::format("reading {} bytes at offset {:#x}", out.size(), offset),
                          errno);
    }
    if (n == 0) break;
    done += static_cast<size_t>(n);
  }
  return done;
}

}  // namespace

Status ImageFile::ReadExact(uint64_t offset, std::span<uint8_t> out) const {
  ASSIGN_OR_RETURN(size_t done, ReadUpTo(*this, offset, out));
  if (done < out.size()) {
    return Error(fmt::format("{}: reading {} bytes at offset {:#x}: unexpected end of file",
                             path_, out.size(), offset));
  }
  return Ok();
}

Status ImageFile::ReadZeroFilled(uint64_t offset, std::span<uint8_t> out) const {
  ASSIGN_OR_RETURN(size_t done, ReadUpTo(*this, offset, out));
  std::fill(out.begin() + static_cast<std::ptrdiff_t>(done), out.end(), uint8_t{0});
  return Ok();
}

Status ImageFile::WriteAll(uint64_t offset, std::span<const uint8_t> data) {
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::pwrite(fd_.get(), data.data() + done, data.size() - done,
                         static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return IoError(fmt::format("writing {} bytes at offset {:#x}", data.size(), offset), errno);
    }
    done += static_cast<size_t>(n);
  }
  return Ok();
}

Status ImageFile::Truncate(uint64_t size) {
  if (::ftruncate(fd_.get(), static_cast<off_t>(size)) != 0) {
    return IoError(fmt::format("resizing to {} bytes", size), errno);
  }
  return Ok();
}

Status ImageFile::DataSync() {
  if (::fdatasync(fd_.get()) != 0) return IoError("fdatasync", errno);
  return Ok();
}

Status ImageFile::PunchHole(uint64_t offset, uint64_t length) {
  if (::fallocate(fd_.get(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                  static_cast<off_t>(offset), static_cast<off_t>(length)) != 0) {
    return IoError(fmt::format("punching a hole of {} bytes at offset {:#x}", length, offset),
                   errno);
  }
  return Ok();
}

Status ImageFile::WriteZeroes(uint64_t offset, uint64_t length) {
  if (::fallocate(fd_.get(), FALLOC_FL_ZERO_RANGE, static_cast<off_t>(offset),
                  static_cast<off_t>(length)) == 0) {
    return Ok();
  }
  if (errno != EOPNOTSUPP && errno != ENOSYS && errno != EINVAL && errno != ENODEV) {
    return IoError(fmt::format("zeroing {} bytes at offset {:#x}", length, offset), errno);
  }
  constexpr uint64_t kChunk = 1 << 20;
  std::vector<uint8_t> zeros(std::min(length, kChunk));
  for (uint64_t done = 0; done < length;) {
    uint64_t n = std::min<uint64_t>(length - done, zeros.size());
    TRY(WriteAll(offset + done, std::span(zeros.data(), n)));
    done += n;
  }
  return Ok();
}

}  // namespace forkvmm::block
