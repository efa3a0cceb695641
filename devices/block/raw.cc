#include "devices/block/raw.h"

#include <fcntl.h>
#include <fmt/core.h>
#include <unistd.h>

#include <cerrno>

namespace forkvmm::block {

Result<std::unique_ptr<RawBackend>> RawBackend::Open(const std::string& path, bool read_only) {
  ASSIGN_OR_RETURN(ImageFile file, ImageFile::Open(path, !read_only));
  return Open(std::move(file));
}

Result<std::unique_ptr<RawBackend>> RawBackend::Open(ImageFile file) {
  ASSIGN_OR_RETURN(uint64_t size, file.Size());
  bool read_only = !file.writable();
  return std::unique_ptr<RawBackend>(new RawBackend(std::move(file), size, read_only));
}

RawBackend::~RawBackend() { FlushOnClose(); }

void RawBackend::StartRead(IoQueue& queue, uint64_t offset, std::span<const iovec> iov,
                           IoCallback done) {
  queue.Read(file_, offset, iov, std::move(done));
}

void RawBackend::StartWrite(IoQueue& queue, uint64_t offset, std::span<const iovec> iov,
                            IoCallback done) {
  queue.Write(file_, offset, iov, std::move(done));
}

void RawBackend::StartFlush(IoQueue& queue, IoCallback done) {
  queue.DataSync(file_, std::move(done));
}

Status RawBackend::DoWriteZeroes(uint64_t offset, uint64_t length) {
  return file_.WriteZeroes(offset, length);
}

Status RawBackend::DoDiscard(uint64_t offset, uint64_t length) {
  Status punched = file_.PunchHole(offset, length);
  // Discard is advisory: a file system without hole punching keeps the data.
  if (!punched.ok() && punched.error().errnum() == EOPNOTSUPP) return Ok();
  return punched;
}

Result<Extent> RawBackend::DoGetExtent(uint64_t offset, uint64_t max_length) {
  // SEEK_DATA/SEEK_HOLE find holes, so copies can skip them; a file system
  // without support reports the whole file as data.
  off_t data = ::lseek(file_.fd(), static_cast<off_t>(offset), SEEK_DATA);
  if (data < 0) {
    if (errno == ENXIO) return Extent{ExtentKind::kZero, max_length};  // a hole up to the end
    return Extent{ExtentKind::kData, max_length};
  }
  auto data_start = static_cast<uint64_t>(data);
  if (data_start > offset) {
    return Extent{ExtentKind::kZero, std::min(max_length, data_start - offset)};
  }
  off_t hole = ::lseek(file_.fd(), static_cast<off_t>(offset), SEEK_HOLE);
  if (hole < 0) return Extent{ExtentKind::kData, max_length};
  auto hole_start = static_cast<uint64_t>(hole);
  return Extent{ExtentKind::kData, std::min(max_length, hole_start - offset)};
}

Status RawBackend::GrowTo(uint64_t new_size) {
  if (read_only_) return Error(fmt::format("{}: the image is open read-only", path_));
  if (new_size <= size_) return Ok();
  TRY(file_.Truncate(new_size));
  size_ = new_size;
  return Ok();
}

Status RawBackend::DoReopenReadOnly() {
  ASSIGN_OR_RETURN(ImageFile reopened, file_.ReopenReadOnly());
  file_ = std::move(reopened);
  return Ok();
}

}  // namespace forkvmm::block
