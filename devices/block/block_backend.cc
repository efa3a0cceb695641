#include "devices/block/block_backend.h"

#include <fmt/core.h>

#include "vmm/base/log.h"

namespace forkvmm::block {

std::string_view FormatName(ImageFormat format) {
  switch (format) {
    case ImageFormat::kRaw: return "raw";
    case ImageFormat::kQcow2: return "qcow2";
  }
  return "unknown";
}

Result<ImageFormat> ParseFormatName(std::string_view name) {
  if (name == "raw") return ImageFormat::kRaw;
  if (name == "qcow2") return ImageFormat::kQcow2;
  return Error(fmt::format("unsupported image format '{}' (supported: raw, qcow2)", name));
}

BlockBackend::~BlockBackend() = default;

void BlockBackend::FlushOnClose() {
  if (queue_) {
    // Requests still in flight refer to this layer's files and state.
    Status drained = queue_->Drain();
    if (!drained.ok()) LOG_ERROR("closing {}: {}", path_, drained.error().message());
  }
  if (read_only_) return;
  Status flushed = Flush();
  if (!flushed.ok()) LOG_ERROR("closing {}: {}", path_, flushed.error().message());
}

Status BlockBackend::CheckRange(std::string_view what, uint64_t offset, uint64_t length) const {
  if (offset > size_ || length > size_ - offset) {
    return Error(fmt::format("{}: {} of {} bytes at offset {:#x} is outside the disk (size {:#x})",
                             path_, what, length, offset, size_));
  }
  return Ok();
}

Status BlockBackend::CheckSynchronousUse() const {
  if (in_flight() > 0) {
    return Error(fmt::format("{}: {} asynchronous requests are in flight; drain them first",
                             path_, in_flight()));
  }
  return Ok();
}

Status BlockBackend::RunInline(const std::function<void(IoQueue&, IoCallback)>& start) {
  if (!inline_queue_) inline_queue_ = IoQueue::CreateInline();
  // An inline queue runs every callback before the start call returns.
  Status result = Error("internal error: an inline request did not complete");
  start(*inline_queue_, [&result](Status status) { result = std::move(status); });
  return result;
}

Status BlockBackend::Read(uint64_t offset, std::span<uint8_t> out) {
  TRY(CheckSynchronousUse());
  TRY(CheckRange("read", offset, out.size()));
  iovec iov{out.data(), out.size()};
  return RunInline([&](IoQueue& queue, IoCallback done) {
    StartRead(queue, offset, std::span(&iov, 1), std::move(done));
  });
}

Status BlockBackend::Write(uint64_t offset, std::span<const uint8_t> data) {
  TRY(CheckSynchronousUse());
  if (read_only_) return Error(fmt::format("{}: the image is open read-only", path_));
  TRY(CheckRange("write", offset, data.size()));
  iovec iov = MakeIovec(data);
  return RunInline([&](IoQueue& queue, IoCallback done) {
    StartWrite(queue, offset, std::span(&iov, 1), std::move(done));
  });
}

Status BlockBackend::WriteZeroes(uint64_t offset, uint64_t length) {
  TRY(CheckSynchronousUse());
  if (read_only_) return Error(fmt::format("{}: the image is open read-only", path_));
  TRY(CheckRange("write-zeroes", offset, length));
  return DoWriteZeroes(offset, length);
}

Status BlockBackend::Discard(uint64_t offset, uint64_t length) {
  TRY(CheckSynchronousUse());
  if (read_only_) return Error(fmt::format("{}: the image is open read-only", path_));
  TRY(CheckRange("discard", offset, length));
  return DoDiscard(offset, length);
}

Status BlockBackend::Flush() {
  TRY(CheckSynchronousUse());
  if (read_only_) return Ok();
  return RunInline([&](IoQueue& queue, IoCallback done) { StartFlush(queue, std::move(done)); });
}

Result<Extent> BlockBackend::GetExtent(uint64_t offset, uint64_t max_length) {
  if (max_length == 0 || offset >= size_) {
    return Error(fmt::format("{}: no extent at offset {:#x} (size {:#x})", path_, offset, size_));
  }
  return DoGetExtent(offset, std::min(max_length, size_ - offset));
}

Status BlockBackend::Unallocate(uint64_t, uint64_t) {
  return Error(fmt::format("{}: {} images have no unallocated state", path_, FormatName(format())));
}

Status BlockBackend::GrowTo(uint64_t) {
  return Error(fmt::format("{}: growing {} images is not supported", path_, FormatName(format())));
}

Result<int> BlockBackend::StartAsync(unsigned queue_depth) {
  if (!queue_) {
    ASSIGN_OR_RETURN(queue_, IoQueue::Create(queue_depth));
  }
  return queue_->event_fd();
}

void BlockBackend::Submit(BlockRequest request) {
  if (!queue_) {
    request.done(Error(fmt::format("{}: Submit() called before StartAsync()", path_)));
    return;
  }
  IoQueue& queue = *queue_;
  // Route the result through the queue so `done` runs from Poll(), never
  // from inside this call.
  IoCallback done = [&queue, user_done = std::move(request.done)](Status status) mutable {
    queue.Complete(std::move(user_done), std::move(status));
  };
  const bool writes = request.op != BlockOp::kRead && request.op != BlockOp::kFlush;
  if (writes && read_only_) {
    done(Error(fmt::format("{}: the image is open read-only", path_)));
    return;
  }
  uint64_t length = request.op == BlockOp::kRead || request.op == BlockOp::kWrite
                        ? IovecTotal(request.iov)
                        : request.length;
  if (request.op != BlockOp::kFlush) {
    Status in_range = CheckRange("request", request.offset, length);
    if (!in_range.ok()) {
      done(std::move(in_range));
      return;
    }
  }
  switch (request.op) {
    case BlockOp::kRead:
      StartRead(queue, request.offset, request.iov, std::move(done));
      break;
    case BlockOp::kWrite:
      StartWrite(queue, request.offset, request.iov, std::move(done));
      break;
    case BlockOp::kFlush:
      if (read_only_) {
        done(Ok());
      } else {
        StartFlush(queue, std::move(done));
      }
      break;
    case BlockOp::kDiscard:
      done(DoDiscard(request.offset, length));
      break;
    case BlockOp::kWriteZeroes:
      done(DoWriteZeroes(request.offset, length));
      break;
  }
  Status submitted = queue.SubmitPrepared();
  if (!submitted.ok()) LOG_ERROR("{}: {}", path_, submitted.error().message());
}

Result<size_t> BlockBackend::Poll() {
  if (!queue_) return size_t{0};
  return queue_->Poll();
}

Status BlockBackend::Wait() {
  if (!queue_) return Ok();
  return queue_->Wait();
}

Status BlockBackend::Drain() {
  if (!queue_) return Ok();
  return queue_->Drain();
}

Status BlockBackend::ReopenReadOnly() {
  TRY(Drain());
  if (read_only_) return Ok();
  TRY(Flush());
  TRY(DoReopenReadOnly());
  read_only_ = true;
  return Ok();
}

void BlockBackend::AbandonAsyncAfterFork() {
  if (!queue_) return;
  queue_->AbandonAfterFork();
  queue_.reset();
}

}  // namespace forkvmm::block
