// Move-only owner of one io_uring instance (liburing).
//
// The ring fd is created by io_uring_setup(2), which always sets
// O_CLOEXEC on it, and the kernel-shared ring mappings are marked
// MADV_DONTFORK, so a forked child inherits neither usable rings nor
// memory aliased with the parent's. The only system calls made are
// io_uring_setup, io_uring_enter and io_uring_register (no ioctl).
//
// Not thread-safe: one thread submits and reaps.
#pragma once

#include <liburing.h>

#include <memory>

#include "vmm/base/result.h"

namespace forkvmm::block {

class IoUring {
 public:
  // Sets up a ring with `entries` submission queue entries (rounded up to a
  // power of two by the kernel).
  static Result<IoUring> Create(unsigned entries);

  IoUring() = default;
  IoUring(IoUring&& other) noexcept = default;
  IoUring& operator=(IoUring&& other) noexcept;
  IoUring(const IoUring&) = delete;
  IoUring& operator=(const IoUring&) = delete;
  ~IoUring();

  bool valid() const { return ring_ != nullptr; }
  int fd() const { return ring_ ? ring_->ring_fd : -1; }
  unsigned sq_entries() const { return ring_ ? ring_->sq.ring_entries : 0; }

  // Returns a free submission queue entry, or nullptr when the queue is full.
  io_uring_sqe* GetSqe() { return io_uring_get_sqe(ring_.get()); }
  // Hands every prepared entry to the kernel; returns how many it took.
  Result<unsigned> Submit();
  // Submits, then blocks until at least `wait_count` completions are ready.
  Result<unsigned> SubmitAndWait(unsigned wait_count);
  // Returns the next completion without blocking, or nullptr.
  io_uring_cqe* PeekCompletion();
  // Marks a completion returned by PeekCompletion as consumed.
  void MarkSeen(io_uring_cqe* cqe) { io_uring_cqe_seen(ring_.get(), cqe); }
  // Makes the kernel signal `event_fd` (an eventfd) whenever it posts a completion.
  Status RegisterEventFd(int event_fd);

  // For a child process after fork(): closes the inherited ring fd without
  // touching the ring mappings, which MADV_DONTFORK kept out of the child.
  void AbandonAfterFork();

 private:
  std::unique_ptr<io_uring> ring_;
};

}  // namespace forkvmm::block
