#include "devices/virtio/virtqueue.h"

#include <fmt/core.h>

#include <atomic>
#include <bit>

namespace forkvmm::devices::virtio {
namespace {

// Ring fields are little-endian (virtio 1.2 §2.7) and are read as host
// integers, which is right only on a little-endian host.
static_assert(std::endian::native == std::endian::little);
static_assert(sizeof(vring_desc) == 16);
static_assert(sizeof(vring_used_elem) == 8);

constexpr uint64_t kMaxChainBytes = uint64_t{1} << 32;

// Offsets inside the rings (virtio 1.2 §2.7.6 and §2.7.8): flags and idx
// come first, then the ring entries, then the event index.
constexpr uint64_t kRingHeaderBytes = 4;
constexpr uint64_t kAvailableIndexOffset = 2;
constexpr uint64_t kUsedIndexOffset = 2;

uint64_t AvailableRingBytes(uint16_t size) {
  return kRingHeaderBytes + 2 * uint64_t{size} + 2;
}
uint64_t UsedRingBytes(uint16_t size) {
  return kRingHeaderBytes + sizeof(vring_used_elem) * uint64_t{size} + 2;
}

bool HasFeature(uint64_t features, unsigned bit) {
  return (features >> bit) & 1;
}

Status CheckRing(memory::GuestMemory& memory, std::string_view name, uint64_t address,
                 uint64_t alignment, uint64_t bytes) {
  if (address % alignment != 0) {
    return Error(
        fmt::format("the {} at {:#x} is not aligned to {} bytes", name, address, alignment));
  }
  if (!memory.IsValidRange(address, bytes)) {
    return Error(
        fmt::format("the {} at {:#x} ({} bytes) is outside guest RAM", name, address, bytes));
  }
  return Ok();
}

}  // namespace

std::string_view ChainErrorName(ChainError error) {
  switch (error) {
    case ChainError::kNone:
      return "no error";
    case ChainError::kTooLong:
      return "chain longer than the queue size (or a loop)";
    case ChainError::kNextOutOfRange:
      return "descriptor index outside the table";
    case ChainError::kBufferOutsideRam:
      return "buffer outside guest RAM";
    case ChainError::kReadableAfterWritable:
      return "device-readable buffer after a writable one";
    case ChainError::kTooManyBytes:
      return "chain longer than 2^32 bytes";
    case ChainError::kIndirectNotNegotiated:
      return "indirect descriptor not negotiated";
    case ChainError::kIndirectMisplaced:
      return "indirect descriptor with NEXT or nested";
    case ChainError::kIndirectTableInvalid:
      return "invalid indirect descriptor table";
  }
  return "unknown chain error";
}

bool IsStructuralChainError(ChainError error) {
  switch (error) {
    case ChainError::kNone:
    case ChainError::kBufferOutsideRam:
    case ChainError::kReadableAfterWritable:
    case ChainError::kTooManyBytes:
      return false;
    case ChainError::kTooLong:
    case ChainError::kNextOutOfRange:
    case ChainError::kIndirectNotNegotiated:
    case ChainError::kIndirectMisplaced:
    case ChainError::kIndirectTableInvalid:
      return true;
  }
  return true;
}

Virtqueue::Virtqueue(memory::GuestMemory& memory, const VirtqueueState& state,
                     uint64_t driver_features)
    : memory_(&memory),
      state_(state),
      indirect_(HasFeature(driver_features, VIRTIO_RING_F_INDIRECT_DESC)),
      event_index_(HasFeature(driver_features, VIRTIO_RING_F_EVENT_IDX)),
      used_at_last_check_(state.next_used) {}

Result<Virtqueue> Virtqueue::Create(memory::GuestMemory& memory, const VirtqueueState& state,
                                    uint16_t max_size, uint64_t driver_features) {
  const VirtqueueConfig& config = state.config;
  if (!config.ready) return Error("the queue is not ready");
  if (config.size == 0 || config.size > max_size || config.size > kMaxQueueSize ||
      !std::has_single_bit(config.size)) {
    return Error(fmt::format("invalid queue size {}: expected a power of two from 1 to {}",
                             config.size, max_size));
  }
  TRY(CheckRing(memory, "descriptor table", config.descriptor_table, VRING_DESC_ALIGN_SIZE,
                sizeof(vring_desc) * uint64_t{config.size}));
  TRY(CheckRing(memory, "available ring", config.available_ring, VRING_AVAIL_ALIGN_SIZE,
                AvailableRingBytes(config.size)));
  TRY(CheckRing(memory, "used ring", config.used_ring, VRING_USED_ALIGN_SIZE,
                UsedRingBytes(config.size)));
  return Virtqueue(memory, state, driver_features);
}

Result<uint16_t> Virtqueue::ReadAvailableIndex() const {
  return memory_->ReadObject<uint16_t>(state_.config.available_ring + kAvailableIndexOffset);
}

Result<std::optional<DescriptorChain>> Virtqueue::Pop() {
  if (state_.broken) return Error("the queue is broken; the driver must reset the device");
  const uint16_t size = state_.config.size;
  ASSIGN_OR_RETURN(uint16_t available, ReadAvailableIndex());
  const auto pending = static_cast<uint16_t>(available - state_.next_available);
  if (pending == 0) return std::optional<DescriptorChain>();
  if (pending > size) {
    state_.broken = true;
    return Error(fmt::format("available index {} is {} entries ahead of the device (queue size {})",
                             available, pending, size));
  }
  // The ring entry and the descriptors were written before the index.
  std::atomic_thread_fence(std::memory_order_acquire);

  const uint64_t entry = state_.config.available_ring + kRingHeaderBytes +
                         2 * uint64_t{static_cast<uint16_t>(state_.next_available % size)};
  ASSIGN_OR_RETURN(uint16_t head, memory_->ReadObject<uint16_t>(entry));
  if (head >= size) {
    state_.broken = true;
    return Error(fmt::format("available ring entry {} names descriptor {} of {}",
                             state_.next_available, head, size));
  }
  ++state_.next_available;

  DescriptorChain chain;
  chain.head = head;
  uint32_t budget = size;
  uint64_t total_bytes = 0;
  WalkTable(state_.config.descriptor_table, size, head, /*indirect=*/false, chain, budget,
            total_bytes);
  return std::optional<DescriptorChain>(std::move(chain));
}

void Virtqueue::WalkTable(uint64_t table, uint32_t table_size, uint16_t head, bool indirect,
                          DescriptorChain& chain, uint32_t& budget, uint64_t& total_bytes) const {
  auto fail = [&chain](ChainError error) {
    if (chain.error == ChainError::kNone || IsStructuralChainError(error)) chain.error = error;
  };
  uint32_t index = head;
  while (true) {
    if (budget == 0) return fail(ChainError::kTooLong);
    --budget;
    if (index >= table_size) return fail(ChainError::kNextOutOfRange);
    auto read = memory_->ReadObject<vring_desc>(table + sizeof(vring_desc) * uint64_t{index});
    // The direct table was checked at creation and each indirect table
    // before its walk, and the RAM layout never changes, so this read
    // cannot fail. The check guards that invariant.
    if (!read.ok()) return fail(ChainError::kIndirectTableInvalid);
    const vring_desc descriptor = *read;

    if (descriptor.flags & VRING_DESC_F_INDIRECT) {
      if (!indirect_) return fail(ChainError::kIndirectNotNegotiated);
      if (indirect || (descriptor.flags & VRING_DESC_F_NEXT)) {
        return fail(ChainError::kIndirectMisplaced);
      }
      if (descriptor.len == 0 || descriptor.len % sizeof(vring_desc) != 0 ||
          !memory_->IsValidRange(descriptor.addr, descriptor.len)) {
        return fail(ChainError::kIndirectTableInvalid);
      }
      // The descriptor that names the table is not part of the chain, but
      // the table's own descriptors count against the queue size.
      ++budget;
      return WalkTable(descriptor.addr, descriptor.len / sizeof(vring_desc), 0, true, chain, budget,
                       total_bytes);
    }

    const bool added = AddBuffer(descriptor, chain, total_bytes);
    if (!(descriptor.flags & VRING_DESC_F_NEXT)) {
      chain.complete = added;
      return;
    }
    index = descriptor.next;
  }
}

bool Virtqueue::AddBuffer(const vring_desc& descriptor, DescriptorChain& chain,
                          uint64_t& total_bytes) const {
  auto fail = [&chain](ChainError error) {
    if (chain.error == ChainError::kNone) chain.error = error;
  };
  const bool writable = descriptor.flags & VRING_DESC_F_WRITE;
  if (!writable && !chain.buffers.empty() && chain.buffers.back().device_writable) {
    fail(ChainError::kReadableAfterWritable);
  }
  total_bytes += descriptor.len;
  if (total_bytes > kMaxChainBytes) fail(ChainError::kTooManyBytes);
  if (!memory_->IsValidRange(descriptor.addr, descriptor.len)) {
    fail(ChainError::kBufferOutsideRam);
    return false;
  }
  chain.buffers.push_back({descriptor.addr, descriptor.len, writable});
  return true;
}

Status Virtqueue::PushUsed(uint16_t head, uint32_t written) {
  const uint16_t size = state_.config.size;
  const uint64_t entry =
      state_.config.used_ring + kRingHeaderBytes +
      sizeof(vring_used_elem) * uint64_t{static_cast<uint16_t>(state_.next_used % size)};
  vring_used_elem element{};
  element.id = head;
  element.len = written;
  TRY(memory_->WriteObject(entry, element));
  // The driver must see the entry before the index that publishes it.
  std::atomic_thread_fence(std::memory_order_release);
  ++state_.next_used;
  return memory_->WriteObject<uint16_t>(state_.config.used_ring + kUsedIndexOffset,
                                        state_.next_used);
}

bool Virtqueue::ShouldNotify() {
  // The used index store must be visible before the driver's suppression
  // fields are read, or a notification the driver waits for can be lost.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  const uint16_t old_used = used_at_last_check_;
  const uint16_t new_used = state_.next_used;
  used_at_last_check_ = new_used;
  if (old_used == new_used) return false;

  const uint16_t size = state_.config.size;
  if (event_index_) {
    auto used_event = memory_->ReadObject<uint16_t>(state_.config.available_ring +
                                                    kRingHeaderBytes + 2 * uint64_t{size});
    if (!used_event.ok()) return true;
    return vring_need_event(*used_event, new_used, old_used);
  }
  auto flags = memory_->ReadObject<uint16_t>(state_.config.available_ring);
  if (!flags.ok()) return true;
  return !(*flags & VRING_AVAIL_F_NO_INTERRUPT);
}

bool Virtqueue::RequestAvailableNotification() {
  // Without EVENT_IDX the device never suppresses notifications (used ring
  // flags stay 0), so the driver notifies for every new entry.
  if (!event_index_ || state_.broken) return false;
  const uint64_t avail_event =
      state_.config.used_ring + kRingHeaderBytes + sizeof(vring_used_elem) * uint64_t{size()};
  if (!memory_->WriteObject<uint16_t>(avail_event, state_.next_available).ok()) return false;
  // Publish avail_event before re-reading the index, because an entry added
  // before the driver saw it would otherwise arrive without a notification.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  auto available = ReadAvailableIndex();
  return available.ok() && *available != state_.next_available;
}

}  // namespace forkvmm::devices::virtio
