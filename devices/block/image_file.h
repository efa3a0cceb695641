// A disk image file opened by path.
//
// ImageFile owns the file descriptor and names the file in every error it
// returns ("disk.qcow2: reading 512 bytes at offset 0x10000: Input/output
// error"), so callers can pass errors up without adding the path again.
// Not thread-safe; positional I/O only, so the fd has no shared file offset.
//
// Every open takes QEMU-compatible image locks on its fd (image_lock.h), so
// an image in use by forkvmm, QEMU or qemu-img cannot be opened in a
// conflicting way. The locks are released when the fd closes.
#pragma once

#include <sys/stat.h>

#include <cstdint>
#include <span>
#include <string>

#include "vmm/base/result.h"
#include "vmm/base/unique_fd.h"

namespace forkvmm::block {

class ImageFile {
 public:
  enum class CreateMode {
    kTruncate,   // replace the contents of an existing file (qemu-img create does this)
    kExclusive,  // fail with EEXIST when the file exists
  };

  ImageFile() = default;

  // Opens an existing file, read-write when `writable`, and locks it. The fd
  // is O_CLOEXEC. `force_share` (read-only opens only, like qemu-img -U)
  // lets others write the file meanwhile. Fails with EAGAIN, changing
  // nothing, when another open holds a conflicting lock.
  static Result<ImageFile> Open(const std::string& path, bool writable, bool force_share = false);
  // Creates (or truncates) a regular file with mode 0644, opens it read-write
  // and locks it. An existing file is truncated only after the lock is taken.
  static Result<ImageFile> Create(const std::string& path, CreateMode mode);

  // Opens the same file again read-only and moves this open's locks to the
  // new fd, reduced to those of a read-only open. No other open can take the
  // file in between, because this fd keeps its locks until it closes.
  Result<ImageFile> ReopenReadOnly() const;

  const std::string& path() const { return path_; }
  int fd() const { return fd_.get(); }
  bool writable() const { return writable_; }
  bool is_open() const { return fd_.valid(); }

  // Returns the size in bytes (SEEK_END, so block devices work without ioctl).
  Result<uint64_t> Size() const;
  Result<struct stat> Stat() const;

  // Reads exactly out.size() bytes; a short file is an error.
  Status ReadExact(uint64_t offset, std::span<uint8_t> out) const;
  // Reads out.size() bytes and fills the part past the end of the file with zeros.
  Status ReadZeroFilled(uint64_t offset, std::span<uint8_t> out) const;
  Status WriteAll(uint64_t offset, std::span<const uint8_t> data);
  Status Truncate(uint64_t size);
  Status DataSync();
  // Deallocates a byte range, keeping the file size. Fails with EOPNOTSUPP
  // where the file system cannot punch holes; callers may ignore that.
  Status PunchHole(uint64_t offset, uint64_t length);
  // Makes a byte range read as zeros (FALLOC_FL_ZERO_RANGE, else writes zeros).
  Status WriteZeroes(uint64_t offset, uint64_t length);

  // Builds an error that names this file: "<path>: <what>: <strerror(errnum)>".
  Error IoError(std::string_view what, int errnum) const;

 private:
  ImageFile(std::string path, UniqueFd fd, bool writable)
      : path_(std::move(path)), fd_(std::move(fd)), writable_(writable) {}

  std::string path_;
  UniqueFd fd_;
  bool writable_ = false;
};

}  // namespace forkvmm::block
