#include "devices/virtio/test_ring.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>

namespace forkvmm::devices::virtio::testing {

memory::GuestMemory MakeTestMemory() {
  auto created =
      memory::GuestMemory::Create({.ram_bytes = kTestRamBytes, .transparent_hugepages = false});
  if (!created.ok()) {
    ADD_FAILURE() << created.error().message();
    std::abort();  // a test binary, not library code
  }
  return std::move(created).value();
}

TestRing::TestRing(memory::GuestMemory& memory, uint16_t size, uint64_t base)
    : memory_(memory), size_(size), descriptor_table_(base) {
  available_ring_ = descriptor_table_ + sizeof(vring_desc) * uint64_t{size};
  used_ring_ = (available_ring_ + 6 + 2 * uint64_t{size} + 3) & ~uint64_t{3};
}

VirtqueueConfig TestRing::config() const {
  return {.size = size_,
          .ready = true,
          .descriptor_table = descriptor_table_,
          .available_ring = available_ring_,
          .used_ring = used_ring_};
}

uint64_t TestRing::Allocate(uint64_t bytes) {
  uint64_t address = next_buffer_;
  next_buffer_ = (next_buffer_ + bytes + 15) & ~uint64_t{15};
  EXPECT_LE(next_buffer_, kTestRamBytes);
  std::vector<uint8_t> zeros(bytes);
  WriteBytes(address, zeros);
  return address;
}

void TestRing::WriteBytes(uint64_t address, const std::vector<uint8_t>& bytes) {
  ASSERT_TRUE(memory_.Write(address, bytes.data(), bytes.size()).ok());
}

std::vector<uint8_t> TestRing::ReadBytes(uint64_t address, uint64_t length) const {
  std::vector<uint8_t> bytes(length);
  EXPECT_TRUE(memory_.Read(address, bytes.data(), length).ok());
  return bytes;
}

void TestRing::SetDescriptor(uint16_t index, uint64_t address, uint32_t length, uint16_t flags,
                             uint16_t next) {
  vring_desc descriptor{address, length, flags, next};
  ASSERT_TRUE(memory_.WriteObject(descriptor_table_ + sizeof(vring_desc) * index, descriptor).ok());
}

void TestRing::WriteTable(uint64_t address, const std::vector<vring_desc>& descriptors) {
  ASSERT_TRUE(
      memory_.Write(address, descriptors.data(), descriptors.size() * sizeof(vring_desc)).ok());
}

uint16_t TestRing::BuildChain(const std::vector<DescriptorBuffer>& buffers) {
  const uint16_t head = next_descriptor_;
  for (size_t i = 0; i < buffers.size(); ++i) {
    const uint16_t index = next_descriptor_;
    next_descriptor_ = static_cast<uint16_t>((next_descriptor_ + 1) % size_);
    const bool last = i + 1 == buffers.size();
    uint16_t flags = buffers[i].device_writable ? VRING_DESC_F_WRITE : 0;
    if (!last) flags |= VRING_DESC_F_NEXT;
    SetDescriptor(index, buffers[i].address, buffers[i].length, flags, last ? 0 : next_descriptor_);
  }
  return head;
}

uint16_t TestRing::AddChain(const std::vector<DescriptorBuffer>& buffers) {
  uint16_t head = BuildChain(buffers);
  MakeAvailable(head);
  return head;
}

void TestRing::MakeAvailable(uint16_t head) {
  const uint64_t entry = available_ring_ + 4 + 2 * uint64_t(available_index_ % size_);
  ASSERT_TRUE(memory_.WriteObject<uint16_t>(entry, head).ok());
  SetAvailableIndex(static_cast<uint16_t>(available_index_ + 1));
}

void TestRing::SetAvailableIndex(uint16_t index) {
  available_index_ = index;
  ASSERT_TRUE(memory_.WriteObject<uint16_t>(available_ring_ + 2, index).ok());
}

void TestRing::SetAvailableFlags(uint16_t flags) {
  ASSERT_TRUE(memory_.WriteObject<uint16_t>(available_ring_, flags).ok());
}

void TestRing::SetUsedEvent(uint16_t index) {
  ASSERT_TRUE(memory_.WriteObject<uint16_t>(available_ring_ + 4 + 2 * uint64_t{size_}, index).ok());
}

uint16_t TestRing::UsedIndex() const {
  return memory_.ReadObject<uint16_t>(used_ring_ + 2).value();
}

vring_used_elem TestRing::UsedElement(uint16_t position) const {
  return memory_.ReadObject<vring_used_elem>(used_ring_ + 4 + 8 * uint64_t(position % size_))
      .value();
}

uint16_t TestRing::AvailEvent() const {
  return memory_.ReadObject<uint16_t>(used_ring_ + 4 + 8 * uint64_t{size_}).value();
}

TempDir::TempDir() {
  const char* tmpdir = getenv("TMPDIR");
  std::string pattern = std::string(tmpdir && *tmpdir ? tmpdir : "/tmp") + "/virtio_test.XXXXXX";
  char* made = mkdtemp(pattern.data());
  EXPECT_NE(made, nullptr);
  path_ = pattern;
}

TempDir::~TempDir() {
  std::error_code ignored;
  std::filesystem::remove_all(path_, ignored);
}

}  // namespace forkvmm::devices::virtio::testing
