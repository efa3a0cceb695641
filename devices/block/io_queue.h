// Asynchronous file I/O for block backends, driven by one thread.
//
// An IoQueue runs vectored reads, writes and fdatasync on image files and
// calls a callback with the result of each. It has three modes:
//   kRing     io_uring: operations are queued to the ring and complete
//             later; Poll() reaps them and runs their callbacks.
//   kDeferred no io_uring on this host (disabled or unsupported): each
//             operation runs with preadv/pwritev before the call returns,
//             and its callback runs from the next Poll(), as in kRing.
//   kInline   the synchronous API of the backends: each operation runs at
//             once and its callback runs before the call returns.
// In kRing and kDeferred mode the queue owns an eventfd that becomes
// readable whenever Poll() has work; an event loop waits on it with epoll.
//
// Short transfers are resubmitted for the rest; a read that reaches the end
// of the file fills the remainder with zeros, like a hole.
//
// Thread safety: none. The thread that calls Read/Write/DataSync must be the
// one that calls Poll, Wait and Drain. Buffers named by the iovecs and the
// ImageFile must stay valid until the operation's callback has run.
#pragma once

#include <deque>
#include <functional>
#include <memory>
#include <span>
#include <vector>

#include "devices/block/image_file.h"
#include "devices/block/io_uring.h"
#include "devices/block/iovec.h"
#include "vmm/base/result.h"
#include "vmm/base/unique_fd.h"

namespace forkvmm::block {

using IoCallback = std::function<void(Status)>;

class IoQueue {
 public:
  enum class Mode { kRing, kDeferred, kInline };

  // Creates an io_uring queue with `depth` entries; where io_uring is not
  // available, falls back to kDeferred mode and logs a warning once.
  static Result<std::unique_ptr<IoQueue>> Create(unsigned depth = 128);
  static std::unique_ptr<IoQueue> CreateInline();

  IoQueue(const IoQueue&) = delete;
  IoQueue& operator=(const IoQueue&) = delete;
  // Waits for operations still in the kernel, without running their
  // callbacks. Owners call Drain() first.
  ~IoQueue();

  Mode mode() const { return mode_; }

  void Read(const ImageFile& file, uint64_t offset, std::span<const iovec> iov, IoCallback done);
  void Write(const ImageFile& file, uint64_t offset, std::span<const iovec> iov, IoCallback done);
  void DataSync(const ImageFile& file, IoCallback done);
  // Completes `done` with `status` without I/O: at once in kInline mode,
  // else from the next Poll().
  void Complete(IoCallback done, Status status);

  // Hands queued operations to the kernel. Read/Write only prepare ring
  // entries, so a caller that issued a batch calls this once at the end.
  Status SubmitPrepared();
  // Reaps finished operations and runs their callbacks; never blocks.
  // Returns the number of callbacks run.
  Result<size_t> Poll();
  // Blocks until Poll() has something to do, or returns at once when
  // nothing is in flight.
  Status Wait();
  // Runs Wait and Poll until no operation is in flight or pending.
  Status Drain();

  // Operations started but whose callbacks have not run yet.
  size_t in_flight() const { return in_flight_ + completed_.size(); }
  // The eventfd that signals completions (-1 in kInline mode).
  int event_fd() const { return event_fd_.get(); }

  // For a child process after fork(): drops the ring and the eventfd
  // inherited from the parent without touching the ring mappings. The queue
  // must have been drained before fork(); it cannot be used afterwards.
  void AbandonAfterFork();

 private:
  enum class OpType { kRead, kWrite, kDataSync };
  struct Op {
    OpType type;
    const ImageFile* file;
    uint64_t offset;
    IovecList iov;
    IoCallback done;
  };

  explicit IoQueue(Mode mode) : mode_(mode) {}

  void Start(std::unique_ptr<Op> op);
  // Runs one operation to completion with preadv/pwritev/fdatasync.
  static Status RunNow(Op& op);
  // Puts `op` into a free ring entry, or behind the operations waiting for one.
  void Prepare(std::unique_ptr<Op> op);
  void PrepareEntry(io_uring_sqe* sqe, std::unique_ptr<Op> op);
  void HandleCompletion(Op* op, int result);
  void Finish(std::unique_ptr<Op> op, Status status);
  void Signal();

  Mode mode_;
  IoUring ring_;
  UniqueFd event_fd_;
  // Ring mode: operations waiting for a free submission entry.
  std::deque<std::unique_ptr<Op>> waiting_;
  // Callbacks ready to run from Poll(), in completion order.
  std::vector<std::pair<IoCallback, Status>> completed_;
  // Operations queued to the ring or waiting for an entry.
  size_t in_flight_ = 0;
  bool unsubmitted_ = false;
};

}  // namespace forkvmm::block
