// The interface between a virtual disk device and the image that stores it.
//
// A BlockBackend is one layer of a disk: a raw file or a qcow2 image, which
// may own a backing layer below it. Offsets and lengths are in bytes and
// need no alignment; every request must lie inside [0, size()).
//
// Two ways to use it, never at the same time:
//   Synchronous  Read/Write/WriteZeroes/Discard/Flush return when done.
//                For tools and tests; they fail while asynchronous
//                requests are in flight.
//   Asynchronous for a device's event-loop thread:
//                  int fd = backend->StartAsync().value();   // once
//                  backend->Submit({.op = BlockOp::kRead, .offset = ...,
//                                   .iov = {...}, .done = callback});
//                  ... epoll on fd; when readable: backend->Poll();
//                `done` runs from Poll() (or Drain()), never from inside
//                Submit(), on the thread that calls them. Data I/O on
//                allocated clusters goes through io_uring; qcow2 metadata
//                work (lookups, allocation, copy-on-write) runs
//                synchronously on that thread inside Submit() or Poll().
//
// Thread safety: none. One thread owns a backend and its whole chain.
// Lifetime: memory named by a request's iovecs must stay valid and
// unchanged (for writes) until its `done` has run.
#pragma once

#include <sys/uio.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "devices/block/io_queue.h"
#include "devices/block/iovec.h"
#include "vmm/base/result.h"

namespace forkvmm::block {

enum class ImageFormat { kRaw, kQcow2 };

std::string_view FormatName(ImageFormat format);
// Parses "raw" or "qcow2".
Result<ImageFormat> ParseFormatName(std::string_view name);

enum class BlockOp { kRead, kWrite, kFlush, kDiscard, kWriteZeroes };

struct BlockRequest {
  BlockOp op = BlockOp::kRead;
  uint64_t offset = 0;
  // Bytes affected by kDiscard and kWriteZeroes; reads and writes use the iovec total.
  uint64_t length = 0;
  // Buffers for kRead and kWrite, usually in guest memory.
  IovecList iov;
  // Receives the result; runs from Poll() or Drain().
  std::function<void(Status)> done;
};

// How a range of one layer is stored, for copying and merging layers.
enum class ExtentKind {
  kData,         // stored in this layer (for qcow2 also compressed clusters)
  kZero,         // reads as zeros, recorded in this layer
  kUnallocated,  // falls through to the backing layer, or zeros without one
};

struct Extent {
  ExtentKind kind;
  uint64_t length;  // bytes, at least 1
};

class BlockBackend {
 public:
  BlockBackend(const BlockBackend&) = delete;
  BlockBackend& operator=(const BlockBackend&) = delete;
  // Flushes a writable layer (errors are logged) and closes its files.
  virtual ~BlockBackend();

  virtual ImageFormat format() const = 0;
  // The path the layer was opened with.
  const std::string& path() const { return path_; }
  // The virtual disk size in bytes.
  uint64_t size() const { return size_; }
  bool read_only() const { return read_only_; }
  // The layer below, or nullptr.
  BlockBackend* backing() const { return backing_.get(); }

  // Synchronous API.
  Status Read(uint64_t offset, std::span<uint8_t> out);
  Status Write(uint64_t offset, std::span<const uint8_t> data);
  Status WriteZeroes(uint64_t offset, uint64_t length);
  // Tells the layer the range is unused. Reads of it may then return zeros
  // or the backing layer's data; ranges smaller than a cluster are ignored.
  Status Discard(uint64_t offset, uint64_t length);
  // Makes every completed write durable: qcow2 metadata is written back in
  // dependency order and the file is fdatasync'ed.
  Status Flush();
  // Describes the range starting at `offset` (up to `max_length` bytes) in
  // this layer only.
  Result<Extent> GetExtent(uint64_t offset, uint64_t max_length);
  // Makes the whole clusters in the range fall through to the backing layer
  // again (qcow2 only), for emptying a layer after a commit.
  virtual Status Unallocate(uint64_t offset, uint64_t length);
  // Grows the disk to `new_size` bytes (raw only); the new part reads as zeros.
  virtual Status GrowTo(uint64_t new_size);

  // Asynchronous API. StartAsync creates the io_uring queue and returns the
  // eventfd that becomes readable when Poll() has work.
  Result<int> StartAsync(unsigned queue_depth = 128);
  bool async_started() const { return queue_ != nullptr; }
  void Submit(BlockRequest request);
  // Reaps completions and runs `done` callbacks; returns how many ran.
  Result<size_t> Poll();
  // Blocks until Poll() has work (returns at once when idle).
  Status Wait();
  // Completes every in-flight request, running its `done`. Fork and
  // snapshot call this before they touch the disk.
  Status Drain();
  size_t in_flight() const { return queue_ ? queue_->in_flight() : 0; }

  // Fork support. Flushes everything and reopens this layer's file
  // read-only, so the layer can become the frozen backing of new overlays.
  Status ReopenReadOnly();
  // In a child process after fork(): drops the io_uring queue inherited
  // from the parent (drained before the fork) without touching the ring
  // memory. StartAsync() makes a new one.
  void AbandonAsyncAfterFork();

  // Layer interface, called by the public methods above and by the layer
  // stacked on this one with that layer's queue. The range is inside size()
  // and, except for StartRead, the layer is writable.
  virtual void StartRead(IoQueue& queue, uint64_t offset, std::span<const iovec> iov,
                         IoCallback done) = 0;

 protected:
  BlockBackend(std::string path, uint64_t size, bool read_only)
      : path_(std::move(path)), size_(size), read_only_(read_only) {}

  virtual void StartWrite(IoQueue& queue, uint64_t offset, std::span<const iovec> iov,
                          IoCallback done) = 0;
  virtual void StartFlush(IoQueue& queue, IoCallback done) = 0;
  virtual Status DoWriteZeroes(uint64_t offset, uint64_t length) = 0;
  virtual Status DoDiscard(uint64_t offset, uint64_t length) = 0;
  virtual Result<Extent> DoGetExtent(uint64_t offset, uint64_t max_length) = 0;
  // Reopens the file read-only; called after a successful flush with no I/O in flight.
  virtual Status DoReopenReadOnly() = 0;
  // True when no asynchronous I/O is in flight (qcow2 frees clusters only then).
  bool io_idle() const { return in_flight() == 0; }
  // Completes in-flight requests and flushes a writable layer. Called by the
  // destructor of the most derived class, while its state still exists;
  // failures are logged.
  void FlushOnClose();

  std::string path_;
  uint64_t size_;
  bool read_only_;
  std::unique_ptr<BlockBackend> backing_;

 private:
  Status CheckRange(std::string_view what, uint64_t offset, uint64_t length) const;
  Status CheckSynchronousUse() const;
  Status RunInline(const std::function<void(IoQueue&, IoCallback)>& start);

  std::unique_ptr<IoQueue> queue_;
  std::unique_ptr<IoQueue> inline_queue_;
};

}  // namespace forkvmm::block
