// A virtio block device (virtio 1.2 §5.2) over a BlockBackend.
//
// Supported requests: read, write, flush, get-id, discard and write-zeroes,
// on one request queue. Offered features: VIRTIO_BLK_F_SEG_MAX,
// _BLK_SIZE (512), _FLUSH, and _DISCARD and _WRITE_ZEROES on writable disks
// or _RO on read-only ones, plus the virtqueue features (kVirtqueueFeatures).
//
// Once active, the device runs one worker thread with an epoll loop over the
// queue's notification eventfd, the backend's completion eventfd and a
// control eventfd. The worker is the only thread that touches the backend
// and the queue while the device runs. The control methods stop and join it
// before they touch either. Requests go to the backend's
// asynchronous API and complete from its Poll(): status byte, used ring,
// then an interrupt unless the driver suppressed it. At most queue-size
// requests are in flight; the worker stops reading the available ring at
// that limit until one completes.
//
// A malformed chain or request completes with VIRTIO_BLK_S_IOERR or
// _UNSUPP where the chain has a status byte, and with used length 0 where
// it has none; either way it is returned to the driver and counted, and a
// rate-limited line is logged. A driver that breaks the available ring
// itself (see Virtqueue::broken) gets DEVICE_NEEDS_RESET.
//
// Fork: the parent calls Quiesce() (all requests completed into the used
// ring, worker joined), may swap the backend (ReleaseBackend /
// ReplaceBackend), and Resume()s. The child calls AbandonAfterFork() on the
// inherited device, optionally takes its backend with ReleaseBackend(), and
// builds a new VirtioBlock over its own backend, restored from the saved
// state through MmioTransport::Restore (or Activate with
// ActivationFromState).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "devices/block/block_backend.h"
#include "devices/virtio/block_request.h"
#include "devices/virtio/device.h"
#include "vmm/base/log.h"
#include "vmm/base/unique_fd.h"

namespace forkvmm::devices::virtio {

struct BlockDeviceOptions {
  // The serial number VIRTIO_BLK_T_GET_ID returns: at most 20 bytes,
  // NUL-padded. Longer strings are rejected.
  std::string id;
  // The request queue's maximum size, a power of two up to 32768.
  uint16_t queue_size = 256;
  // Discard granularity advertised to the driver, in 512-byte sectors. A
  // hint only: backends ignore discards smaller than their cluster.
  uint32_t discard_alignment_sectors = 128;
};

// Maximum sectors in one discard or write-zeroes segment (32 MiB), and
// segments per request. The backend runs these synchronously on the worker
// thread, so the limits bound how long one request occupies the worker.
inline constexpr uint32_t kMaxDiscardSectors = 65536;
inline constexpr uint32_t kMaxDiscardSegments = 8;
inline constexpr uint32_t kMaxWriteZeroesSectors = 65536;
inline constexpr uint32_t kMaxWriteZeroesSegments = 8;

struct VirtioBlockCounters {
  uint64_t requests = 0;
  // Chains with a ChainError.
  uint64_t malformed_chains = 0;
  // Requests completed with VIRTIO_BLK_S_IOERR without I/O, and with
  // VIRTIO_BLK_S_UNSUPP.
  uint64_t invalid_requests = 0;
  uint64_t unsupported_requests = 0;
  // Requests the backend failed.
  uint64_t io_errors = 0;
  // Times the driver broke the available ring.
  uint64_t broken_queues = 0;
};

class VirtioBlock : public VirtioDevice {
 public:
  // Builds an inactive device over `backend`, whose size sets the capacity
  // (a partial last sector is not visible to the guest).
  static Result<std::shared_ptr<VirtioBlock>> Create(std::unique_ptr<block::BlockBackend> backend,
                                                     BlockDeviceOptions options);
  // Stops the worker like Reset(), unless the device was abandoned.
  ~VirtioBlock() override;
  VirtioBlock(const VirtioBlock&) = delete;
  VirtioBlock& operator=(const VirtioBlock&) = delete;

  uint32_t device_type() const override;
  uint64_t device_features() const override { return features_; }
  size_t queue_count() const override { return 1; }
  uint16_t max_queue_size(size_t queue) const override;
  void ReadConfig(uint64_t offset, std::span<uint8_t> data) const override;
  // The configuration space has no writable field (VIRTIO_BLK_F_CONFIG_WCE
  // is not offered), so writes are ignored.
  void WriteConfig(uint64_t offset, std::span<const uint8_t> data) override;

  Status Activate(DeviceActivation activation) override;
  void Reset() override;
  Result<VirtioDeviceState> Quiesce() override;
  // Fails if the backend was released and not replaced.
  Status Resume() override;
  Result<VirtioDeviceState> Save() const override;
  // Also abandons the backend's io_uring (BlockBackend::AbandonAsyncAfterFork).
  void AbandonAfterFork() override;
  DeviceLifecycle lifecycle() const override { return lifecycle_; }

  // The backend, or nullptr after ReleaseBackend(). Only while the worker
  // is stopped (inactive, quiesced or abandoned), e.g. for
  // block::FreezeAndBranch.
  block::BlockBackend* backend() { return backend_.get(); }
  // Removes and returns the backend while the worker is stopped, or returns
  // nullptr while it runs.
  std::unique_ptr<block::BlockBackend> ReleaseBackend();
  // Installs `backend` while the worker is stopped. It must have the same
  // size and read-only flag as the one the device was created with, since
  // the driver has read both.
  Status ReplaceBackend(std::unique_ptr<block::BlockBackend> backend);

  VirtioBlockCounters counters() const;

 private:
  struct InFlight;

  VirtioBlock(std::unique_ptr<block::BlockBackend> backend, const BlockDeviceOptions& options);

  bool worker_stopped() const { return lifecycle_ != DeviceLifecycle::kRunning; }
  Status StartWorker();
  // Stops and joins the worker, and returns the error that ended it early,
  // if any.
  Status StopWorker();
  void WorkerMain();
  Status RunWorkerLoop();
  void ProcessQueue(size_t queue);
  void HandleChain(size_t queue, DescriptorChain chain);
  void Submit(size_t queue, uint16_t head, ParsedBlockRequest& request);
  void FinishRequest(const std::shared_ptr<InFlight>& request);
  void Complete(size_t queue, uint16_t head, std::optional<uint64_t> status_address, uint8_t status,
                uint32_t used_length);
  void PollCompletions();
  void NotifyDriver();
  void CountInvalid(const ParsedBlockRequest& request, const DescriptorChain& chain);

  // Fixed at creation.
  std::unique_ptr<block::BlockBackend> backend_;
  std::string name_;
  const uint64_t disk_bytes_;
  const bool read_only_;
  const uint16_t max_queue_size_;
  const uint64_t features_;
  virtio_blk_config config_{};
  std::array<uint8_t, kBlockIdBytes> id_{};

  DeviceLifecycle lifecycle_ = DeviceLifecycle::kInactive;
  // Set by Activate and used by the worker.
  memory::GuestMemory* memory_ = nullptr;
  uint64_t driver_features_ = 0;
  std::vector<Virtqueue> queues_;
  std::vector<int> notify_fds_;
  std::shared_ptr<VirtioInterrupt> interrupt_;
  BlockRequestLimits limits_;

  // Worker state, touched only by the worker thread while it runs.
  std::vector<uint32_t> in_flight_;
  std::vector<bool> pushed_;
  UniqueFd epoll_fd_;
  UniqueFd control_fd_;
  std::thread worker_;
  std::atomic<bool> stop_requested_{false};
  Status worker_status_;

  std::atomic<uint64_t> requests_{0};
  std::atomic<uint64_t> malformed_chains_{0};
  std::atomic<uint64_t> invalid_requests_{0};
  std::atomic<uint64_t> unsupported_requests_{0};
  std::atomic<uint64_t> io_errors_{0};
  std::atomic<uint64_t> broken_queues_{0};
  mutable RateLimiter log_limiter_{10, std::chrono::seconds(5)};
};

}  // namespace forkvmm::devices::virtio
