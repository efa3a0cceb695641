// Test helpers: a driver's side of a split virtqueue, written directly into
// a GuestMemory the test owns, and a temporary directory.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "devices/virtio/virtqueue.h"
#include "memory/guest_memory.h"

namespace forkvmm::devices::virtio::testing {

inline constexpr uint64_t kTestRamBytes = 16 * memory::kMiB;

// Returns 16 MiB of anonymous guest RAM, or aborts the test binary if it
// cannot.
memory::GuestMemory MakeTestMemory();

// The driver side of one queue: descriptor table, available ring and used
// ring at fixed guest addresses from `base`, and a bump allocator for
// buffers from 1 MiB.
class TestRing {
 public:
  TestRing(memory::GuestMemory& memory, uint16_t size, uint64_t base = 0x10000);

  uint16_t size() const { return size_; }
  VirtqueueConfig config() const;
  // A ready queue with both indices at 0.
  VirtqueueState state() const { return {.config = config()}; }

  // Returns the guest address of `bytes` fresh bytes (zeroed), 16-aligned.
  uint64_t Allocate(uint64_t bytes);
  void WriteBytes(uint64_t address, const std::vector<uint8_t>& bytes);
  std::vector<uint8_t> ReadBytes(uint64_t address, uint64_t length) const;

  void SetDescriptor(uint16_t index, uint64_t address, uint32_t length, uint16_t flags,
                     uint16_t next = 0);
  // Writes `descriptors` as an indirect table at `address`.
  void WriteTable(uint64_t address, const std::vector<vring_desc>& descriptors);

  // Builds a chain over descriptors taken in turn from the table (each
  // with NEXT to the following one) and returns its head.
  uint16_t BuildChain(const std::vector<DescriptorBuffer>& buffers);
  // Builds a chain and makes it available.
  uint16_t AddChain(const std::vector<DescriptorBuffer>& buffers);

  // Puts `head` in the next available ring entry and publishes the index.
  void MakeAvailable(uint16_t head);
  void SetAvailableIndex(uint16_t index);
  // The available index the driver published last.
  uint16_t AvailableIndex() const { return available_index_; }
  void SetAvailableFlags(uint16_t flags);
  void SetUsedEvent(uint16_t index);

  uint16_t UsedIndex() const;
  vring_used_elem UsedElement(uint16_t position) const;
  uint16_t AvailEvent() const;

 private:
  memory::GuestMemory& memory_;
  uint16_t size_;
  uint64_t descriptor_table_;
  uint64_t available_ring_;
  uint64_t used_ring_;
  uint16_t available_index_ = 0;
  uint16_t next_descriptor_ = 0;
  uint64_t next_buffer_ = memory::kMiB;
};

// A directory under $TMPDIR (or /tmp), removed with its contents.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string File(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

}  // namespace forkvmm::devices::virtio::testing
