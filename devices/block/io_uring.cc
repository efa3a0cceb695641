#include "devices/block/io_uring.h"

#include <unistd.h>

#include <cstring>

namespace forkvmm::block {

Result<IoUring> IoUring::Create(unsigned entries) {
  auto ring = std::make_unique<io_uring>();
  int ret = io_uring_queue_init(entries, ring.get(), 0);
  if (ret < 0) return Error::FromErrno("io_uring_setup", {}, -ret);
  // A child must never see the parent's submission and completion rings:
  // their pages are shared with the kernel and would alias the parent's.
  ret = io_uring_ring_dontfork(ring.get());
  if (ret < 0) {
    io_uring_queue_exit(ring.get());
    return Error::FromErrno("madvise(MADV_DONTFORK) on the io_uring rings", {}, -ret);
  }
  IoUring result;
  result.ring_ = std::move(ring);
  return result;
}

IoUring& IoUring::operator=(IoUring&& other) noexcept {
  if (this != &other) {
    if (ring_) io_uring_queue_exit(ring_.get());
    ring_ = std::move(other.ring_);
  }
  return *this;
}

IoUring::~IoUring() {
  if (ring_) io_uring_queue_exit(ring_.get());
}

Result<unsigned> IoUring::Submit() {
  int ret = io_uring_submit(ring_.get());
  if (ret < 0) return Error::FromErrno("io_uring_enter", "(submit)", -ret);
  return static_cast<unsigned>(ret);
}

Result<unsigned> IoUring::SubmitAndWait(unsigned wait_count) {
  for (;;) {
    int ret = io_uring_submit_and_wait(ring_.get(), wait_count);
    if (ret == -EINTR) continue;
    if (ret < 0) return Error::FromErrno("io_uring_enter", "(submit and wait)", -ret);
    return static_cast<unsigned>(ret);
  }
}

io_uring_cqe* IoUring::PeekCompletion() {
  io_uring_cqe* cqe = nullptr;
  if (io_uring_peek_cqe(ring_.get(), &cqe) != 0) return nullptr;
  return cqe;
}

Status IoUring::RegisterEventFd(int event_fd) {
  int ret = io_uring_register_eventfd(ring_.get(), event_fd);
  if (ret < 0) return Error::FromErrno("io_uring_register", "(eventfd)", -ret);
  return Ok();
}

void IoUring::AbandonAfterFork() {
  if (!ring_) return;
  ::close(ring_->ring_fd);
  // The ring memory was never mapped in this process (MADV_DONTFORK), so the
  // struct is dropped without io_uring_queue_exit, which would munmap ranges
  // that may by now belong to other mappings.
  ring_.reset();
}

}  // namespace forkvmm::block
