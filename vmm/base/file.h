// Read-only access to a host file with exact-length reads, for loaders that
// parse untrusted files (kernels, initrds, snapshot files).
#pragma once

#include <cstdint>
#include <string>

#include "vmm/base/result.h"
#include "vmm/base/unique_fd.h"

namespace forkvmm {

class ReadOnlyFile {
 public:
  static Result<ReadOnlyFile> Open(const std::string& path);

  const std::string& path() const { return path_; }
  uint64_t size() const { return size_; }
  int fd() const { return fd_.get(); }

  // Reads exactly `length` bytes at `offset`. A range past the end of the
  // file is an error that names the file, so callers can report truncation.
  Status ReadAt(uint64_t offset, void* destination, uint64_t length) const;

 private:
  ReadOnlyFile(UniqueFd fd, std::string path, uint64_t size)
      : fd_(std::move(fd)), path_(std::move(path)), size_(size) {}
  UniqueFd fd_;
  std::string path_;
  uint64_t size_ = 0;
};

}  // namespace forkvmm
