#include "memory/guest_memory.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <limits>

namespace forkvmm::memory {
namespace {

GuestMemory MakeMemory(uint64_t bytes) {
  auto memory = GuestMemory::Create({.ram_bytes = bytes});
  EXPECT_TRUE(memory.ok()) << memory.error().message();
  return std::move(memory).value();
}

TEST(RamLayout, SmallGuestHasOneRange) {
  auto ranges = RamRangesFor(512 * kMiB);
  ASSERT_EQ(ranges.size(), 1u);
  EXPECT_EQ(ranges[0].guest_address, 0u);
  EXPECT_EQ(ranges[0].size, 512 * kMiB);
}

TEST(RamLayout, LargeGuestSkipsMmioHole) {
  auto ranges = RamRangesFor(5 * kGiB);
  ASSERT_EQ(ranges.size(), 2u);
  EXPECT_EQ(ranges[0].size, 3 * kGiB);
  EXPECT_EQ(ranges[1].guest_address, 4 * kGiB);
  EXPECT_EQ(ranges[1].size, 2 * kGiB);
}

TEST(RamLayout, ExactlyThreeGiBHasOneRange) {
  EXPECT_EQ(RamRangesFor(3 * kGiB).size(), 1u);
}

TEST(GuestMemory, ReadsBackWhatWasWritten) {
  GuestMemory memory = MakeMemory(16 * kMiB);
  uint64_t value = 0x1122334455667788;
  ASSERT_TRUE(memory.WriteObject(0x1000, value).ok());
  auto read = memory.ReadObject<uint64_t>(0x1000);
  ASSERT_TRUE(read.ok());
  EXPECT_EQ(*read, value);
}

TEST(GuestMemory, LastByteIsAccessible) {
  GuestMemory memory = MakeMemory(16 * kMiB);
  EXPECT_TRUE(memory.WriteObject<uint8_t>(16 * kMiB - 1, 7).ok());
  EXPECT_TRUE(memory.IsValidRange(16 * kMiB - 8, 8));
}

TEST(GuestMemory, OnePastTheEndIsRejected) {
  GuestMemory memory = MakeMemory(16 * kMiB);
  EXPECT_FALSE(memory.IsValidRange(16 * kMiB, 1));
  EXPECT_FALSE(memory.IsValidRange(16 * kMiB - 7, 8));
  auto status = memory.WriteObject<uint8_t>(16 * kMiB, 7);
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.error().message(), "guest address range 0x1000000+0x1 is outside guest RAM");
}

TEST(GuestMemory, ZeroLengthAtEndIsValid) {
  GuestMemory memory = MakeMemory(16 * kMiB);
  EXPECT_TRUE(memory.IsValidRange(16 * kMiB, 0));
  EXPECT_FALSE(memory.IsValidRange(16 * kMiB + 1, 0));
}

TEST(GuestMemory, OverflowingRangeIsRejected) {
  GuestMemory memory = MakeMemory(16 * kMiB);
  constexpr uint64_t kMax = std::numeric_limits<uint64_t>::max();
  EXPECT_FALSE(memory.IsValidRange(0x1000, kMax));
  EXPECT_FALSE(memory.IsValidRange(kMax, 2));
  EXPECT_FALSE(memory.IsValidRange(kMax - 0xfff, 0x1000));
}

TEST(GuestMemory, RangeAcrossMmioHoleIsRejected) {
  GuestMemory memory = MakeMemory(3 * kGiB + 16 * kMiB);
  EXPECT_TRUE(memory.IsValidRange(3 * kGiB - 8, 8));
  EXPECT_FALSE(memory.IsValidRange(3 * kGiB - 8, 16));
  EXPECT_FALSE(memory.IsValidRange(3 * kGiB, 1));
  EXPECT_TRUE(memory.IsValidRange(4 * kGiB, 16 * kMiB));
  EXPECT_FALSE(memory.IsValidRange(4 * kGiB, 16 * kMiB + 1));
}

TEST(GuestMemory, HighRegionMapsAfterLowRegion) {
  GuestMemory memory = MakeMemory(3 * kGiB + 16 * kMiB);
  auto low_end = memory.HostAddress(3 * kGiB - 1, 1);
  auto high_start = memory.HostAddress(4 * kGiB, 1);
  ASSERT_TRUE(low_end.ok());
  ASSERT_TRUE(high_start.ok());
  EXPECT_EQ(*low_end + 1, *high_start);
}

TEST(GuestMemory, SizeOutOfRangeIsRejected) {
  EXPECT_FALSE(GuestMemory::Create({.ram_bytes = 0}).ok());
  EXPECT_FALSE(GuestMemory::Create({.ram_bytes = 4 * kMiB}).ok());
  EXPECT_FALSE(GuestMemory::Create({.ram_bytes = 2048 * kGiB}).ok());
}

TEST(GuestMemory, UnalignedSizeIsRejected) {
  auto memory = GuestMemory::Create({.ram_bytes = 16 * kMiB + 1});
  ASSERT_FALSE(memory.ok());
  EXPECT_EQ(memory.error().message(), "guest RAM size 16777217 bytes is not a multiple of 4 KiB");
}

TEST(GuestMemory, MemfdBackingIsPrivate) {
  auto memory = GuestMemory::Create({.ram_bytes = 16 * kMiB, .backing = Backing::kMemfd});
  ASSERT_TRUE(memory.ok()) << memory.error().message();
  ASSERT_TRUE(memory->WriteObject<uint32_t>(0, 0xdeadbeef).ok());
  // A private mapping: the write is visible here but not in the memfd.
  uint32_t in_file = 1;
  ASSERT_EQ(pread(memory->backing_fd(), &in_file, sizeof(in_file), 0), 4);
  EXPECT_EQ(in_file, 0u);
}

TEST(GuestMemory, MissingFileBackingNamesPath) {
  auto memory = GuestMemory::Create(
      {.ram_bytes = 16 * kMiB, .backing = Backing::kFile, .file_path = "/nonexistent/ram"});
  ASSERT_FALSE(memory.ok());
  EXPECT_EQ(memory.error().message(), "open /nonexistent/ram: No such file or directory");
}

}  // namespace
}  // namespace forkvmm::memory
