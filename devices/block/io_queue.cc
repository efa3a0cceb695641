#include "devices/block/io_queue.h"

#include <fmt/core.h>
#include <limits.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>

#include "vmm/base/log.h"

namespace forkvmm::block {
namespace {

// The most iovecs one readv/writev takes; longer lists go in several steps.
constexpr size_t kMaxIovecsPerCall = IOV_MAX;

std::string DescribeOp(const char* what, uint64_t bytes, uint64_t offset) {
  return fmt::format("{} {} bytes at offset {:#x}", what, bytes, offset);
}

}  // namespace

Result<std::unique_ptr<IoQueue>> IoQueue::Create(unsigned depth) {
  int efd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (efd < 0) return Error::FromErrno("eventfd", "(block I/O completions)");
  UniqueFd event_fd(efd);

  auto ring = IoUring::Create(depth);
  std::unique_ptr<IoQueue> queue;
  if (ring.ok()) {
    queue.reset(new IoQueue(Mode::kRing));
    queue->ring_ = std::move(ring).value();
    TRY(queue->ring_.RegisterEventFd(event_fd.get()));
  } else {
    static std::atomic<bool> warned{false};
    if (!warned.exchange(true)) {
      LOG_WARNING("io_uring is not available ({}); block I/O will run synchronously",
                  ring.error().message());
    }
    queue.reset(new IoQueue(Mode::kDeferred));
  }
  queue->event_fd_ = std::move(event_fd);
  return queue;
}

std::unique_ptr<IoQueue> IoQueue::CreateInline() {
  return std::unique_ptr<IoQueue>(new IoQueue(Mode::kInline));
}

IoQueue::~IoQueue() {
  if (mode_ != Mode::kRing || !ring_.valid()) return;
  // The kernel may still write into the buffers of in-flight reads, so wait
  // for them; their callbacks may refer to objects that are already gone.
  size_t queued = in_flight_ - std::min(in_flight_, waiting_.size());
  waiting_.clear();
  while (queued > 0) {
    if (!ring_.SubmitAndWait(1).ok()) break;
    while (io_uring_cqe* cqe = ring_.PeekCompletion()) {
      auto* op = static_cast<Op*>(io_uring_cqe_get_data(cqe));
      ring_.MarkSeen(cqe);
      delete op;
      --queued;
    }
  }
}

void IoQueue::Read(const ImageFile& file, uint64_t offset, std::span<const iovec> iov,
                   IoCallback done) {
  Start(std::unique_ptr<Op>(
      new Op{OpType::kRead, &file, offset, IovecList(iov.begin(), iov.end()), std::move(done)}));
}

void IoQueue::Write(const ImageFile& file, uint64_t offset, std::span<const iovec> iov,
                    IoCallback done) {
  Start(std::unique_ptr<Op>(
      new Op{OpType::kWrite, &file, offset, IovecList(iov.begin(), iov.end()), std::move(done)}));
}

void IoQueue::DataSync(const ImageFile& file, IoCallback done) {
  Start(std::unique_ptr<Op>(new Op{OpType::kDataSync, &file, 0, {}, std::move(done)}));
}

void IoQueue::Complete(IoCallback done, Status status) {
  if (mode_ == Mode::kInline) {
    done(std::move(status));
    return;
  }
  completed_.emplace_back(std::move(done), std::move(status));
  Signal();
}

void IoQueue::Start(std::unique_ptr<Op> op) {
  if (op->type != OpType::kDataSync && IovecTotal(op->iov) == 0) {
    Complete(std::move(op->done), Ok());
    return;
  }
  if (mode_ != Mode::kRing) {
    Status status = RunNow(*op);
    Complete(std::move(op->done), std::move(status));
    return;
  }
  ++in_flight_;
  Prepare(std::move(op));
}

Status IoQueue::RunNow(Op& op) {
  if (op.type == OpType::kDataSync) {
    if (::fdatasync(op.file->fd()) != 0) return op.file->IoError("fdatasync", errno);
    return Ok();
  }
  const uint64_t total = IovecTotal(op.iov);
  const uint64_t start = op.offset;
  const char* what = op.type == OpType::kRead ? "reading" : "writing";
  while (!op.iov.empty()) {
    int count = static_cast<int>(std::min(op.iov.size(), kMaxIovecsPerCall));
    ssize_t n = op.type == OpType::kRead
                    ? ::preadv(op.file->fd(), op.iov.data(), count, static_cast<off_t>(op.offset))
                    : ::pwritev(op.file->fd(), op.iov.data(), count, static_cast<off_t>(op.offset));
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      return op.file->IoError(DescribeOp(what, total, start), errno);
    }
    if (n == 0 && op.type == OpType::kRead) {
      ZeroIovecs(op.iov);  // past the end of the file
      break;
    }
    if (n == 0) return op.file->IoError(DescribeOp(what, total, start), EIO);
    op.offset += static_cast<uint64_t>(n);
    AdvanceIovecs(op.iov, static_cast<uint64_t>(n));
  }
  return Ok();
}

void IoQueue::Prepare(std::unique_ptr<Op> op) {
  io_uring_sqe* sqe = waiting_.empty() ? ring_.GetSqe() : nullptr;
  if (sqe == nullptr) {
    waiting_.push_back(std::move(op));  // SubmitPrepared() moves it in when entries free up
    return;
  }
  PrepareEntry(sqe, std::move(op));
}

void IoQueue::PrepareEntry(io_uring_sqe* sqe, std::unique_ptr<Op> op) {
  unsigned count = static_cast<unsigned>(std::min(op->iov.size(), kMaxIovecsPerCall));
  switch (op->type) {
    case OpType::kRead:
      io_uring_prep_readv(sqe, op->file->fd(), op->iov.data(), count, op->offset);
      break;
    case OpType::kWrite:
      io_uring_prep_writev(sqe, op->file->fd(), op->iov.data(), count, op->offset);
      break;
    case OpType::kDataSync:
      io_uring_prep_fsync(sqe, op->file->fd(), IORING_FSYNC_DATASYNC);
      break;
  }
  // The Op, and the iovec array the entry points to, live until its completion.
  io_uring_sqe_set_data(sqe, op.release());
  unsubmitted_ = true;
}

Status IoQueue::SubmitPrepared() {
  if (mode_ != Mode::kRing) return Ok();
  for (;;) {
    while (!waiting_.empty()) {
      io_uring_sqe* sqe = ring_.GetSqe();
      if (sqe == nullptr) break;
      std::unique_ptr<Op> op = std::move(waiting_.front());
      waiting_.pop_front();
      PrepareEntry(sqe, std::move(op));
    }
    if (!unsubmitted_) return Ok();
    TRY(ring_.Submit());
    unsubmitted_ = false;
    // Without SQPOLL the kernel consumes every submitted entry, so the loop
    // moves more waiting operations in on each pass.
    if (waiting_.empty()) return Ok();
  }
}

void IoQueue::HandleCompletion(Op* raw_op, int result) {
  std::unique_ptr<Op> op(raw_op);
  if (result == -EINTR || result == -EAGAIN) {
    Prepare(std::move(op));
    return;
  }
  const char* what = op->type == OpType::kRead    ? "reading"
                     : op->type == OpType::kWrite ? "writing"
                                                  : "fdatasync";
  if (result < 0) {
    std::string description = op->type == OpType::kDataSync
                                  ? std::string(what)
                                  : DescribeOp(what, IovecTotal(op->iov), op->offset);
    Error error = op->file->IoError(description, -result);
    Finish(std::move(op), std::move(error));
    return;
  }
  if (op->type == OpType::kDataSync) {
    Finish(std::move(op), Ok());
    return;
  }
  auto transferred = static_cast<uint64_t>(result);
  if (transferred == 0) {
    if (op->type == OpType::kRead) {
      ZeroIovecs(op->iov);  // past the end of the file
      Finish(std::move(op), Ok());
    } else {
      Error error = op->file->IoError(DescribeOp(what, IovecTotal(op->iov), op->offset), EIO);
      Finish(std::move(op), std::move(error));
    }
    return;
  }
  AdvanceIovecs(op->iov, transferred);
  op->offset += transferred;
  if (op->iov.empty()) {
    Finish(std::move(op), Ok());
  } else {
    Prepare(std::move(op));  // a short transfer: continue with the rest
  }
}

void IoQueue::Finish(std::unique_ptr<Op> op, Status status) {
  --in_flight_;
  IoCallback done = std::move(op->done);
  op.reset();
  done(std::move(status));
}

Result<size_t> IoQueue::Poll() {
  if (mode_ == Mode::kInline) return size_t{0};
  uint64_t counter = 0;
  ssize_t unused = ::read(event_fd_.get(), &counter, sizeof(counter));  // reset; EAGAIN is fine
  (void)unused;

  size_t ran = 0;
  if (mode_ == Mode::kRing) {
    TRY(SubmitPrepared());
    while (io_uring_cqe* cqe = ring_.PeekCompletion()) {
      auto* op = static_cast<Op*>(io_uring_cqe_get_data(cqe));
      int result = cqe->res;
      ring_.MarkSeen(cqe);
      if (op == nullptr) continue;  // a no-op used to flush the submission queue
      HandleCompletion(op, result);
      ++ran;
    }
  }
  // Callbacks may start more operations and complete more requests, so take
  // the current batch and leave new completions for the next Poll().
  std::vector<std::pair<IoCallback, Status>> batch;
  batch.swap(completed_);
  for (auto& [done, status] : batch) {
    done(std::move(status));
    ++ran;
  }
  if (!completed_.empty()) Signal();
  TRY(SubmitPrepared());
  return ran;
}

Status IoQueue::Wait() {
  if (!completed_.empty() || in_flight_ == 0 || mode_ != Mode::kRing) return Ok();
  TRY(SubmitPrepared());
  TRY(ring_.SubmitAndWait(1));
  return Ok();
}

Status IoQueue::Drain() {
  while (in_flight() > 0) {
    TRY(Wait());
    TRY(Poll());
  }
  return Ok();
}

void IoQueue::Signal() {
  if (!event_fd_.valid()) return;
  uint64_t one = 1;
  ssize_t unused = ::write(event_fd_.get(), &one, sizeof(one));
  (void)unused;
}

void IoQueue::AbandonAfterFork() {
  ring_.AbandonAfterFork();
  event_fd_.Reset();
  // Operations of the parent are not ours to finish; their memory was copied
  // into this process, so release it without running callbacks.
  for (auto& op : waiting_) op.reset();
  waiting_.clear();
  completed_.clear();
  in_flight_ = 0;
}

}  // namespace forkvmm::block
