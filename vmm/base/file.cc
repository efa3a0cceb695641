#include "vmm/base/file.h"

#include <fcntl.h>
#include <sys/stat.h>

#include <fmt/core.h>

namespace forkvmm {

Result<ReadOnlyFile> ReadOnlyFile::Open(const std::string& path) {
  UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return Error::FromErrno("open", path);
  struct stat st {};
  if (fstat(fd.get(), &st) != 0) return Error::FromErrno("fstat", path);
  if (!S_ISREG(st.st_mode)) return Error(fmt::format("{}: not a regular file", path));
  return ReadOnlyFile(std::move(fd), path, static_cast<uint64_t>(st.st_size));
}

Status ReadOnlyFile::ReadAt(uint64_t offset, void* destination, uint64_t length) const {
  if (offset > size_ || length > size_ - offset) {
    return Error(fmt::format("{}: file is truncated: {} bytes at offset {:#x} extend past its end "
                             "({} bytes)",
                             path_, length, offset, size_));
  }
  auto* out = static_cast<uint8_t*>(destination);
  while (length > 0) {
    ssize_t n = pread(fd_.get(), out, length, static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      return Error::FromErrno("read", path_);
    }
    if (n == 0) return Error(fmt::format("{}: file shrank while being read", path_));
    out += n;
    offset += static_cast<uint64_t>(n);
    length -= static_cast<uint64_t>(n);
  }
  return Ok();
}

}  // namespace forkvmm
