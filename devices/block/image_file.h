// A disk image file opened by path.
//
// ImageFile owns the file descriptor and names the file in every error it
// returns ("disk.qcow2: reading 512 bytes at offset 0x10000: Input/output
// error"), so callers can pass errors up without adding the path again.
// Not thread-safe; positional I/O only, so the fd has no shared file offset.
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

  // Opens an existing file, read-write when `writable`. The fd is O_CLOEXEC.
  static Result<ImageFile> Open(const std::string& path, bool writable);
  // Creates (or truncates) a regular file with mode 0644 and opens it read-write.
  static Result<ImageFile> Create(const std::string& path, CreateMode mode);

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
