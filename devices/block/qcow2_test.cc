#include "devices/block/qcow2.h"

#include <gtest/gtest.h>

#include <cstring>

#include "devices/block/image.h"
#include "devices/block/qcow2_check.h"
#include "devices/block/qcow2_create.h"
#include "devices/block/test_support.h"

namespace forkvmm::block {
namespace {

using testing::RandomBytes;
using testing::TempDir;

std::unique_ptr<BlockBackend> OpenOrDie(const std::string& path, ImageFormat format,
                                        OpenOptions options = {}) {
  auto opened = OpenImage(path, format, options);
  EXPECT_TRUE(opened.ok()) << opened.error().message();
  return opened.ok() ? std::move(opened).value() : nullptr;
}

void CreateQcow2(const std::string& path, uint64_t size, CreateImageOptions options = {}) {
  options.format = ImageFormat::kQcow2;
  options.size = size;
  Status created = CreateImage(path, options);
  ASSERT_TRUE(created.ok()) << created.error().message();
}

void ExpectClean(const std::string& path) {
  auto report = qcow2::CheckImage(path, qcow2::RepairMode::kNone);
  ASSERT_TRUE(report.ok()) << report.error().message();
  EXPECT_EQ(report->corruptions, 0u);
  EXPECT_EQ(report->leaks, 0u);
  for (const auto& message : report->messages) ADD_FAILURE() << path << ": " << message;
}

std::vector<uint8_t> ReadAll(BlockBackend& disk) {
  std::vector<uint8_t> out(disk.size());
  Status read = disk.Read(0, out);
  EXPECT_TRUE(read.ok()) << read.error().message();
  return out;
}

TEST(Qcow2Test, NewImageReadsZeros) {
  TempDir dir;
  CreateQcow2(dir.File("a.qcow2"), 1 << 20);
  auto disk = OpenOrDie(dir.File("a.qcow2"), ImageFormat::kQcow2);
  ASSERT_TRUE(disk);
  EXPECT_EQ(disk->size(), 1u << 20);
  std::vector<uint8_t> data = ReadAll(*disk);
  EXPECT_EQ(std::count(data.begin(), data.end(), 0), 1 << 20);
  disk.reset();
  ExpectClean(dir.File("a.qcow2"));
}

class Qcow2ClusterSizeTest : public ::testing::TestWithParam<uint64_t> {};

TEST_P(Qcow2ClusterSizeTest, WriteReadReopen) {
  const uint64_t cluster = GetParam();
  TempDir dir;
  const std::string path = dir.File("a.qcow2");
  const uint64_t size = 8 * cluster + 4096 + 512;  // not a cluster multiple
  CreateQcow2(path, size, {.cluster_size = cluster});
  std::vector<uint8_t> expected(size, 0);
  {
    auto disk = OpenOrDie(path, ImageFormat::kQcow2);
    ASSERT_TRUE(disk);
    // Unaligned pieces across cluster boundaries, the last sector, and a rewrite.
    struct Piece {
      uint64_t offset;
      uint64_t length;
    };
    const Piece pieces[] = {{100, 3 * cluster}, {cluster * 5 - 7, 20}, {size - 512, 512},
                            {0, 512},           {2 * cluster, cluster}, {size - 1, 1}};
    uint32_t seed = 1;
    for (const Piece& p : pieces) {
      std::vector<uint8_t> data = RandomBytes(p.length, seed++);
      Status written = disk->Write(p.offset, data);
      ASSERT_TRUE(written.ok()) << written.error().message();
      std::memcpy(expected.data() + p.offset, data.data(), p.length);
    }
    EXPECT_EQ(ReadAll(*disk), expected);
    ASSERT_TRUE(disk->Flush().ok());
  }
  ExpectClean(path);
  auto reopened = OpenOrDie(path, ImageFormat::kQcow2, {.read_only = true});
  ASSERT_TRUE(reopened);
  EXPECT_EQ(ReadAll(*reopened), expected);
}

INSTANTIATE_TEST_SUITE_P(ClusterSizes, Qcow2ClusterSizeTest,
                         ::testing::Values(512, 1024, 4096, 65536, 1 << 21));

class Qcow2RefcountWidthTest : public ::testing::TestWithParam<uint32_t> {};

TEST_P(Qcow2RefcountWidthTest, AllocationGrowsRefcountTable) {
  // 512-byte clusters make the refcount table and blocks grow quickly.
  TempDir dir;
  const std::string path = dir.File("a.qcow2");
  const uint64_t size = 8 << 20;
  CreateQcow2(path, size, {.cluster_size = 512, .refcount_bits = GetParam()});
  std::vector<uint8_t> data = RandomBytes(size, GetParam());
  {
    auto disk = OpenOrDie(path, ImageFormat::kQcow2);
    ASSERT_TRUE(disk);
    for (uint64_t offset = 0; offset < size; offset += 64 << 10) {
      Status written = disk->Write(offset, std::span(data).subspan(offset, 64 << 10));
      ASSERT_TRUE(written.ok()) << written.error().message();
    }
  }
  ExpectClean(path);
  auto reopened = OpenOrDie(path, ImageFormat::kQcow2, {.read_only = true});
  ASSERT_TRUE(reopened);
  EXPECT_EQ(ReadAll(*reopened), data);
}

INSTANTIATE_TEST_SUITE_P(Widths, Qcow2RefcountWidthTest,
                         ::testing::Values(1, 2, 4, 8, 16, 32, 64));

TEST(Qcow2Test, CopyOnWriteFromQcow2Backing) {
  TempDir dir;
  const uint64_t size = 1 << 20;
  CreateQcow2(dir.File("base.qcow2"), size, {.cluster_size = 4096});
  std::vector<uint8_t> base_data = RandomBytes(size, 7);
  {
    auto base = OpenOrDie(dir.File("base.qcow2"), ImageFormat::kQcow2);
    ASSERT_TRUE(base->Write(0, base_data).ok());
  }
  CreateQcow2(dir.File("top.qcow2"), size,
              {.cluster_size = 65536, .backing_file = "base.qcow2",
               .backing_format = ImageFormat::kQcow2});
  std::vector<uint8_t> expected = base_data;
  {
    auto top = OpenOrDie(dir.File("top.qcow2"), ImageFormat::kQcow2);
    ASSERT_TRUE(top);
    EXPECT_EQ(ReadAll(*top), base_data);
    std::vector<uint8_t> patch = RandomBytes(100, 8);
    ASSERT_TRUE(top->Write(70000, patch).ok());
    std::memcpy(expected.data() + 70000, patch.data(), patch.size());
    EXPECT_EQ(ReadAll(*top), expected);
  }
  ExpectClean(dir.File("top.qcow2"));
  ExpectClean(dir.File("base.qcow2"));
  auto base = OpenOrDie(dir.File("base.qcow2"), ImageFormat::kQcow2, {.read_only = true});
  EXPECT_EQ(ReadAll(*base), base_data);
}

TEST(Qcow2Test, ShortRawBackingReadsZerosPastItsEnd) {
  TempDir dir;
  std::vector<uint8_t> base_data = RandomBytes(10000, 3);
  testing::WriteFileBytes(dir.File("base.raw"), base_data);
  CreateQcow2(dir.File("top.qcow2"), 1 << 20,
              {.cluster_size = 4096, .backing_file = "base.raw",
               .backing_format = ImageFormat::kRaw});
  auto top = OpenOrDie(dir.File("top.qcow2"), ImageFormat::kQcow2);
  ASSERT_TRUE(top);
  std::vector<uint8_t> expected(1 << 20, 0);
  std::memcpy(expected.data(), base_data.data(), base_data.size());
  EXPECT_EQ(ReadAll(*top), expected);
  // Copy-on-write of the cluster that straddles the backing file's end.
  ASSERT_TRUE(top->Write(8192 + 10, std::vector<uint8_t>(4, 0xee)).ok());
  std::memset(expected.data() + 8192 + 10, 0xee, 4);
  EXPECT_EQ(ReadAll(*top), expected);
}

TEST(Qcow2Test, LastSectorAndOnePastTheEnd) {
  TempDir dir;
  CreateQcow2(dir.File("a.qcow2"), 1 << 20);
  auto disk = OpenOrDie(dir.File("a.qcow2"), ImageFormat::kQcow2);
  std::vector<uint8_t> sector(512, 0x5a);
  EXPECT_TRUE(disk->Write((1 << 20) - 512, sector).ok());
  std::vector<uint8_t> back(512);
  EXPECT_TRUE(disk->Read((1 << 20) - 512, back).ok());
  EXPECT_EQ(back, sector);
  Status past = disk->Write(1 << 20, sector);
  ASSERT_FALSE(past.ok());
  EXPECT_EQ(past.error().message(),
            dir.File("a.qcow2") +
                ": write of 512 bytes at offset 0x100000 is outside the disk (size 0x100000)");
  EXPECT_FALSE(disk->Read((1 << 20) - 511, back).ok());
}

TEST(Qcow2Test, WriteZeroesAndDiscard) {
  TempDir dir;
  const uint64_t size = 1 << 20;
  std::vector<uint8_t> base_data = RandomBytes(size, 11);
  testing::WriteFileBytes(dir.File("base.raw"), base_data);
  CreateQcow2(dir.File("top.qcow2"), size,
              {.cluster_size = 4096, .backing_file = "base.raw",
               .backing_format = ImageFormat::kRaw});
  std::vector<uint8_t> expected = base_data;
  {
    auto top = OpenOrDie(dir.File("top.qcow2"), ImageFormat::kQcow2);
    ASSERT_TRUE(top->Write(0, RandomBytes(65536, 12)).ok());
    ASSERT_TRUE(top->WriteZeroes(1000, 20000).ok());
    std::memcpy(expected.data(), RandomBytes(65536, 12).data(), 65536);
    std::memset(expected.data() + 1000, 0, 20000);
    ASSERT_TRUE(top->Discard(32768, 8192).ok());  // zero flag: backing data stays hidden
    std::memset(expected.data() + 32768, 0, 8192);
    EXPECT_EQ(ReadAll(*top), expected);
    ASSERT_TRUE(top->Flush().ok());
  }
  ExpectClean(dir.File("top.qcow2"));
  auto reopened = OpenOrDie(dir.File("top.qcow2"), ImageFormat::kQcow2, {.read_only = true});
  EXPECT_EQ(ReadAll(*reopened), expected);
}

}  // namespace
}  // namespace forkvmm::block
