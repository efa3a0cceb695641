// A raw disk image: the file's bytes are the disk's bytes.
#pragma once

#include <memory>
#include <string>

#include "devices/block/block_backend.h"
#include "devices/block/image_file.h"

namespace forkvmm::block {

class RawBackend final : public BlockBackend {
 public:
  // Opens `path`; the disk size is the file size at open time.
  static Result<std::unique_ptr<RawBackend>> Open(const std::string& path, bool read_only);
  // Takes an open file; the backend is writable when the file is.
  static Result<std::unique_ptr<RawBackend>> Open(ImageFile file);
  ~RawBackend() override;

  ImageFormat format() const override { return ImageFormat::kRaw; }
  Status GrowTo(uint64_t new_size) override;
  void StartRead(IoQueue& queue, uint64_t offset, std::span<const iovec> iov,
                 IoCallback done) override;

 protected:
  void StartWrite(IoQueue& queue, uint64_t offset, std::span<const iovec> iov,
                  IoCallback done) override;
  void StartFlush(IoQueue& queue, IoCallback done) override;
  Status DoWriteZeroes(uint64_t offset, uint64_t length) override;
  Status DoDiscard(uint64_t offset, uint64_t length) override;
  Result<Extent> DoGetExtent(uint64_t offset, uint64_t max_length) override;
  Status DoReopenReadOnly() override;

 private:
  RawBackend(ImageFile file, uint64_t size, bool read_only)
      : BlockBackend(file.path(), size, read_only), file_(std::move(file)) {}

  ImageFile file_;
};

}  // namespace forkvmm::block
