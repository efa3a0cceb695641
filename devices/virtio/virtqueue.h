// Split virtqueues (virtio 1.2 §2.7), seen from the device side.
//
// A Virtqueue reads descriptor chains that the driver made available and
// returns them through the used ring. Everything it reads from guest memory
// is hostile: every access goes through GuestMemory's bounds-checked
// accessors, and a malformed chain is reported in DescriptorChain::error
// rather than trusted. A chain contains at most queue-size buffers, so the
// memory a guest can make the device allocate per chain is bounded.
//
// Supported features: VIRTIO_F_VERSION_1, VIRTIO_RING_F_INDIRECT_DESC and
// VIRTIO_RING_F_EVENT_IDX. Packed rings and VIRTIO_F_IN_ORDER are not.
//
// Thread safety: none. While a device is active, one worker thread owns each
// Virtqueue; the transport only reads its saved state when the device is
// quiesced.
#pragma once

#include <linux/virtio_config.h>
// The header's legacy helpers do not compile as C++.
#ifndef VIRTIO_RING_NO_LEGACY
#define VIRTIO_RING_NO_LEGACY
#endif
#include <linux/virtio_ring.h>

#include <cstdint>
#include <optional>
#include <string_view>
#include <vector>

#include "memory/guest_memory.h"
#include "vmm/base/result.h"

namespace forkvmm::devices::virtio {

// The largest queue size the split ring format allows (virtio 1.2 §2.7).
inline constexpr uint16_t kMaxQueueSize = 32768;

// Feature bits implemented by Virtqueue that every device offers.
inline constexpr uint64_t kVirtqueueFeatures = (uint64_t{1} << VIRTIO_F_VERSION_1) |
                                               (uint64_t{1} << VIRTIO_RING_F_INDIRECT_DESC) |
                                               (uint64_t{1} << VIRTIO_RING_F_EVENT_IDX);

// The size and guest addresses of a queue, as the driver wrote them to the
// transport's registers.
struct VirtqueueConfig {
  uint16_t size = 0;
  bool ready = false;
  uint64_t descriptor_table = 0;  // Descriptor Area, guest-physical
  uint64_t available_ring = 0;    // Driver Area, guest-physical
  uint64_t used_ring = 0;         // Device Area, guest-physical

  bool operator==(const VirtqueueConfig&) const = default;
};

// A queue's complete state, for snapshots and fork.
struct VirtqueueState {
  VirtqueueConfig config;
  // The next available ring entry the device will read (free-running).
  uint16_t next_available = 0;
  // The used ring index the device last published (free-running).
  uint16_t next_used = 0;
  // Set once the driver broke the ring itself (see Virtqueue::broken()).
  bool broken = false;

  bool operator==(const VirtqueueState&) const = default;
};

// One guest buffer of a descriptor chain. It lies entirely inside guest RAM.
struct DescriptorBuffer {
  uint64_t address = 0;
  uint32_t length = 0;
  bool device_writable = false;
};

// The defect that makes a descriptor chain malformed.
enum class ChainError {
  kNone,
  // More descriptors than the queue size: every loop ends here.
  kTooLong,
  // A `next` field or chain head names no descriptor of the table.
  kNextOutOfRange,
  // A buffer is not entirely inside guest RAM (or its end overflows).
  kBufferOutsideRam,
  // A device-readable buffer follows a device-writable one.
  kReadableAfterWritable,
  // The buffers add up to more than 2^32 bytes.
  kTooManyBytes,
  // VIRTQ_DESC_F_INDIRECT without VIRTIO_RING_F_INDIRECT_DESC negotiated.
  kIndirectNotNegotiated,
  // An indirect descriptor with VIRTQ_DESC_F_NEXT, or inside an indirect table.
  kIndirectMisplaced,
  // An indirect table that is empty, not a multiple of 16 bytes, or outside RAM.
  kIndirectTableInvalid,
};

std::string_view ChainErrorName(ChainError error);

// True for errors after which the rest of the chain cannot be found, so the
// device cannot locate its last buffer.
bool IsStructuralChainError(ChainError error);

// A descriptor chain popped from the available ring.
struct DescriptorChain {
  // The head descriptor index, which the used ring returns to the driver.
  uint16_t head = 0;
  // The chain's buffers in order. When `error` is set, this contains the
  // valid buffers found before the walk stopped (structural errors) or
  // every buffer except those outside RAM (other errors).
  std::vector<DescriptorBuffer> buffers;
  // The first error found, or kNone for a well-formed chain.
  ChainError error = ChainError::kNone;
  // True when the walk reached the chain's last descriptor and its buffer,
  // inside guest RAM, is buffers.back().
  bool complete = false;
};

class Virtqueue {
 public:
  // Builds a queue from `state` after checking that its configuration is
  // usable: ready, a power-of-two size from 1 to `max_size`, and each ring
  // aligned (16, 2 and 4 bytes) and inside guest RAM. `driver_features` is
  // the negotiated feature set. `memory` must outlive the queue.
  static Result<Virtqueue> Create(memory::GuestMemory& memory, const VirtqueueState& state,
                                  uint16_t max_size, uint64_t driver_features);

  uint16_t size() const { return state_.config.size; }
  // True once the driver published an available index more than the queue
  // size ahead of the device, or a chain head outside the table. The device
  // then stops using the queue until the driver resets it; the transport
  // reports DEVICE_NEEDS_RESET.
  bool broken() const { return state_.broken; }

  // Pops the next available chain. Returns std::nullopt when the ring is
  // empty, and an error (and marks the queue broken) when the ring itself is
  // malformed. A malformed chain is returned with its error set so the
  // device can complete it.
  Result<std::optional<DescriptorChain>> Pop();

  // Returns the chain `head` to the driver with `written` bytes used.
  Status PushUsed(uint16_t head, uint32_t written);

  // Returns true when the driver asked for a used-buffer notification for
  // the entries pushed since the previous call (VRING_AVAIL_F_NO_INTERRUPT,
  // or used_event with VIRTIO_RING_F_EVENT_IDX).
  bool ShouldNotify();

  // With VIRTIO_RING_F_EVENT_IDX, sets avail_event so that the driver
  // notifies the device of the next entry it adds. Returns true when entries
  // arrived in the meantime, so the caller pops again before it sleeps.
  bool RequestAvailableNotification();

  VirtqueueState Save() const { return state_; }

 private:
  Virtqueue(memory::GuestMemory& memory, const VirtqueueState& state, uint64_t driver_features);

  Result<uint16_t> ReadAvailableIndex() const;
  // Walks the descriptors of the chain starting at `head` in the table at
  // `table` of `table_size` entries, appending to `chain`. `budget` is the
  // number of descriptors the chain may still use.
  void WalkTable(uint64_t table, uint32_t table_size, uint16_t head, bool indirect,
                 DescriptorChain& chain, uint32_t& budget, uint64_t& total_bytes) const;
  // Appends the buffer of `descriptor` unless it lies outside guest RAM, and
  // returns whether it did.
  bool AddBuffer(const vring_desc& descriptor, DescriptorChain& chain, uint64_t& total_bytes) const;

  memory::GuestMemory* memory_;
  VirtqueueState state_;
  bool indirect_ = false;
  bool event_index_ = false;
  // The used index when ShouldNotify() last ran.
  uint16_t used_at_last_check_ = 0;
};

}  // namespace forkvmm::devices::virtio
