#include "memory/page_walk.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <optional>

namespace forkvmm::memory {
namespace {

constexpr uint64_t kPresentWritable = 0x3;
constexpr uint64_t kPageSize = 0x80;
constexpr uint64_t kPml4 = 0x1000;
constexpr uint64_t kPdpt = 0x2000;
constexpr uint64_t kPd = 0x3000;
constexpr uint64_t kPt = 0x4000;
// The address where Linux maps its kernel text: PML4 slot 511, PDPT slot
// 510, PD slot 8.
constexpr uint64_t kKernelText = 0xffffffff81000000;

constexpr PagingState kLongMode{.cr0 = 0x80000011, .cr3 = kPml4, .cr4 = 0x20, .efer = 0x500};

class PageWalkTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto created = GuestMemory::Create({.ram_bytes = 16 * kMiB});
    ASSERT_TRUE(created.ok()) << created.error().message();
    memory_.emplace(std::move(created).value());
  }

  void SetEntry(uint64_t table, uint64_t index, uint64_t value) {
    ASSERT_TRUE(memory_->WriteObject(table + index * 8, value).ok());
  }

  // Maps the kernel text's first 2 MiB through a page table of 4 KiB pages
  // whose page i is at guest-physical 0x100000 + i * 0x1000.
  void MapKernelTextWithSmallPages() {
    SetEntry(kPml4, 511, kPdpt | kPresentWritable);
    SetEntry(kPdpt, 510, kPd | kPresentWritable);
    SetEntry(kPd, 8, kPt | kPresentWritable);
    for (uint64_t i = 0; i < 512; ++i) SetEntry(kPt, i, (0x100000 + i * 0x1000) | 0x1);
  }

  Result<uint64_t> Translate(uint64_t address, PagingState paging = kLongMode) {
    return TranslateVirtual(*memory_, paging, address);
  }

  std::optional<GuestMemory> memory_;
};

TEST_F(PageWalkTest, WithoutPagingIsIdentity) {
  auto physical = Translate(0x12345678, {.cr0 = 0x11});
  ASSERT_TRUE(physical.ok()) << physical.error().message();
  EXPECT_EQ(*physical, 0x12345678u);
}

TEST_F(PageWalkTest, SmallPage) {
  MapKernelTextWithSmallPages();
  auto physical = Translate(kKernelText + 0x16af9);
  ASSERT_TRUE(physical.ok()) << physical.error().message();
  EXPECT_EQ(*physical, 0x100000u + 0x16af9);
}

TEST_F(PageWalkTest, TwoMegabytePage) {
  SetEntry(kPml4, 511, kPdpt | kPresentWritable);
  SetEntry(kPdpt, 510, kPd | kPresentWritable);
  SetEntry(kPd, 8, 0x1000000 | kPageSize | kPresentWritable);
  auto physical = Translate(kKernelText + 0x16af9);
  ASSERT_TRUE(physical.ok()) << physical.error().message();
  EXPECT_EQ(*physical, 0x1016af9u);
}

TEST_F(PageWalkTest, OneGigabytePage) {
  SetEntry(kPml4, 0, kPdpt | kPresentWritable);
  SetEntry(kPdpt, 1, 0x40000000 | kPageSize | kPresentWritable);
  auto physical = Translate(0x40000000 + 0x123456);
  ASSERT_TRUE(physical.ok()) << physical.error().message();
  EXPECT_EQ(*physical, 0x40123456u);
}

TEST_F(PageWalkTest, FiveLevelPaging) {
  // With CR4.LA57 the table at CR3 is a PML5; its slot 511 leads to the
  // PML4 built by MapKernelTextWithSmallPages.
  MapKernelTextWithSmallPages();
  constexpr uint64_t kPml5 = 0x5000;
  SetEntry(kPml5, 511, kPml4 | kPresentWritable);
  PagingState paging = kLongMode;
  paging.cr3 = kPml5;
  paging.cr4 |= 1u << 12;
  // Bits 56:48 of kKernelText are all ones: PML5 slot 511.
  auto physical = Translate(kKernelText, paging);
  ASSERT_TRUE(physical.ok()) << physical.error().message();
  EXPECT_EQ(*physical, 0x100000u);
}

TEST_F(PageWalkTest, NotPresentFails) {
  MapKernelTextWithSmallPages();
  SetEntry(kPt, 0x16, 0);
  auto physical = Translate(kKernelText + 0x16af9);
  ASSERT_FALSE(physical.ok());
  EXPECT_EQ(physical.error().message(),
            "cannot translate 0xffffffff81016af9: not present at page-table level 1");
}

TEST_F(PageWalkTest, NonCanonicalFails) {
  auto physical = Translate(0x0000'8000'0000'0000ull);
  ASSERT_FALSE(physical.ok());
  EXPECT_EQ(physical.error().message(),
            "cannot translate 0x800000000000: the address is not canonical");
}

TEST_F(PageWalkTest, TableOutsideRamFails) {
  SetEntry(kPml4, 511, 0x7fff'0000'0000ull | kPresentWritable);
  auto physical = Translate(kKernelText);
  ASSERT_FALSE(physical.ok());
  EXPECT_NE(physical.error().message().find("outside guest RAM"), std::string::npos)
      << physical.error().message();
}

TEST_F(PageWalkTest, CrThreeOutsideRamFails) {
  PagingState paging = kLongMode;
  paging.cr3 = 64 * kMiB;
  EXPECT_FALSE(Translate(kKernelText, paging).ok());
}

TEST_F(PageWalkTest, ThirtyTwoBitPagingFails) {
  auto physical = Translate(0x1000, {.cr0 = 0x80000011, .cr3 = kPml4});
  ASSERT_FALSE(physical.ok());
  EXPECT_EQ(physical.error().message(), "cannot translate 0x1000: the vCPU uses 32-bit paging");
}

}  // namespace
}  // namespace forkvmm::memory
