// Check and repair, dirty and corrupt bits, and compressed clusters.
#include "devices/block/qcow2_check.h"

#include <gtest/gtest.h>

#include <cstring>

#include "devices/block/image.h"
#include "devices/block/qcow2_compress.h"
#include "devices/block/qcow2_format.h"
#include "devices/block/qcow2_refcount.h"
#include "devices/block/test_support.h"

namespace forkvmm::block::qcow2 {
namespace {

using testing::HashFile;
using testing::RandomBytes;
using testing::TempDir;

constexpr uint64_t kCluster = 65536;

// Reads the header of an image file.
Header ReadHeaderOf(const std::string& path) {
  std::vector<uint8_t> bytes = testing::ReadFileBytes(path);
  return ParseHeader(bytes, bytes.size()).value();
}

// Returns the file offset of the L2 entry for `guest_offset` (its L2 table must exist).
uint64_t L2EntryOffset(const std::string& path, uint64_t guest_offset) {
  Header h = ReadHeaderOf(path);
  std::vector<uint8_t> bytes = testing::ReadFileBytes(path);
  uint64_t l1_index = guest_offset / (h.cluster_size() * h.l2_entries());
  uint64_t l2 = LoadBe64(bytes.data() + h.l1_table_offset + l1_index * 8) & kOffsetMask;
  return l2 + ((guest_offset / h.cluster_size()) % h.l2_entries()) * 8;
}

uint64_t ReadBe64At(const std::string& path, uint64_t offset) {
  return LoadBe64(testing::ReadFileBytes(path).data() + offset);
}

void WriteBe64At(const std::string& path, uint64_t offset, uint64_t value) {
  std::vector<uint8_t> bytes = testing::ReadFileBytes(path);
  StoreBe64(bytes.data() + offset, value);
  testing::WriteFileBytes(path, bytes);
}

// Sets the refcount of host cluster `cluster` directly in its block.
void PokeRefcount(const std::string& path, uint64_t cluster, uint64_t value) {
  Header h = ReadHeaderOf(path);
  std::vector<uint8_t> bytes = testing::ReadFileBytes(path);
  uint64_t per_block = (h.cluster_size() * 8) >> h.refcount_order;
  uint64_t block = LoadBe64(bytes.data() + h.refcount_table_offset + (cluster / per_block) * 8);
  SetRefcountEntry(bytes.data() + block, cluster % per_block, h.refcount_order, value);
  testing::WriteFileBytes(path, bytes);
}

std::string MakeWrittenImage(const TempDir& dir, std::vector<uint8_t>* contents) {
  std::string path = dir.File("a.qcow2");
  EXPECT_TRUE(CreateImage(path, {.size = 8 * kCluster}).ok());
  *contents = RandomBytes(8 * kCluster, 3);
  auto disk = OpenImage(path, ImageFormat::kQcow2).value();
  EXPECT_TRUE(disk->Write(0, *contents).ok());
  return path;
}

std::vector<uint8_t> ReadImage(const std::string& path) {
  auto disk = OpenImage(path, ImageFormat::kQcow2, {.read_only = true}).value();
  std::vector<uint8_t> out(disk->size());
  EXPECT_TRUE(disk->Read(0, out).ok());
  return out;
}

TEST(CheckTest, CleanImageHasNoProblems) {
  TempDir dir;
  std::vector<uint8_t> contents;
  std::string path = MakeWrittenImage(dir, &contents);
  CheckReport report = CheckImage(path, RepairMode::kNone).value();
  EXPECT_EQ(report.corruptions, 0u);
  EXPECT_EQ(report.leaks, 0u);
  EXPECT_EQ(report.total_clusters, 8u);
  EXPECT_EQ(report.allocated_clusters, 8u);
  EXPECT_EQ(report.image_end_offset, testing::ReadFileBytes(path).size());
}

TEST(CheckTest, LeakIsReportedAndRepaired) {
  TempDir dir;
  std::vector<uint8_t> contents;
  std::string path = MakeWrittenImage(dir, &contents);
  uint64_t clusters = testing::ReadFileBytes(path).size() / kCluster;
  PokeRefcount(path, clusters - 1, 2);  // the last data cluster: one reference, refcount 2
  CheckReport found = CheckImage(path, RepairMode::kNone).value();
  EXPECT_EQ(found.leaks, 1u);
  EXPECT_EQ(found.corruptions, 1u);  // and its copied flag now disagrees
  ASSERT_FALSE(found.messages.empty());
  EXPECT_EQ(found.messages.back(),
            "Leaked cluster " + std::to_string(clusters - 1) + ": refcount 2, references 1");
  CheckReport repaired = CheckImage(path, RepairMode::kLeaks).value();
  EXPECT_EQ(repaired.leaks_fixed, 1u);
  EXPECT_EQ(repaired.leaks, 0u);
  EXPECT_EQ(repaired.corruptions, 0u);
  EXPECT_EQ(ReadImage(path), contents);
}

TEST(CheckTest, TooLowRefcountIsCorruptionUntilRepaired) {
  TempDir dir;
  std::vector<uint8_t> contents;
  std::string path = MakeWrittenImage(dir, &contents);
  uint64_t host = ReadBe64At(path, L2EntryOffset(path, 0)) & kOffsetMask;
  PokeRefcount(path, host / kCluster, 0);
  CheckReport found = CheckImage(path, RepairMode::kNone).value();
  EXPECT_GE(found.corruptions, 1u);
  CheckReport leaks_only = CheckImage(path, RepairMode::kLeaks).value();
  EXPECT_GE(leaks_only.corruptions, 1u);
  CheckReport repaired = CheckImage(path, RepairMode::kAll).value();
  EXPECT_EQ(repaired.corruptions, 0u);
  EXPECT_EQ(repaired.leaks, 0u);
  EXPECT_GE(repaired.corruptions_fixed, 1u);
  EXPECT_EQ(ReadImage(path), contents);
}

TEST(CheckTest, EmptyL1EntryWithFlagsIsCleared) {
  TempDir dir;
  std::vector<uint8_t> contents;
  std::string path = MakeWrittenImage(dir, &contents);
  const uint64_t l1_offset = ReadHeaderOf(path).l1_table_offset;
  WriteBe64At(path, l1_offset, kFlagCopied);  // no L2 table offset
  const std::string hash = HashFile(path);
  CheckReport found = CheckImage(path, RepairMode::kNone).value();
  EXPECT_EQ(found.corruptions, 1u);
  EXPECT_EQ(found.leaks, 9u);  // the L2 table and the 8 data clusters
  ASSERT_FALSE(found.messages.empty());
  EXPECT_EQ(found.messages.front(), "ERROR L1 table entry 0 (0x8000000000000000) has flags or "
                                    "reserved bits set but no L2 table offset");
  EXPECT_EQ(HashFile(path), hash);

  CheckReport repaired = CheckImage(path, RepairMode::kAll).value();
  EXPECT_EQ(repaired.corruptions, 0u);
  EXPECT_EQ(repaired.leaks, 0u);
  EXPECT_EQ(repaired.corruptions_fixed, 1u);
  EXPECT_EQ(ReadBe64At(path, l1_offset), 0u);
  EXPECT_EQ(ReadImage(path), std::vector<uint8_t>(contents.size(), 0));
}

TEST(CheckTest, ReservedL1BitsKeepTheTableReferenced) {
  TempDir dir;
  std::vector<uint8_t> contents;
  std::string path = MakeWrittenImage(dir, &contents);
  const uint64_t l1_offset = ReadHeaderOf(path).l1_table_offset;
  WriteBe64At(path, l1_offset, ReadBe64At(path, l1_offset) | (uint64_t{1} << 56));
  const std::string hash = HashFile(path);
  CheckReport repaired = CheckImage(path, RepairMode::kAll).value();
  EXPECT_EQ(repaired.corruptions, 1u);
  EXPECT_EQ(repaired.leaks, 0u);
  EXPECT_EQ(HashFile(path), hash) << "nothing here is repairable";
}

TEST(CheckTest, MissingRefcountBlockIsRebuilt) {
  TempDir dir;
  std::vector<uint8_t> contents;
  std::string path = MakeWrittenImage(dir, &contents);
  Header h = ReadHeaderOf(path);
  WriteBe64At(path, h.refcount_table_offset, 0);  // drop refcount block 0
  CheckReport found = CheckImage(path, RepairMode::kNone).value();
  EXPECT_GT(found.corruptions, 0u);
  CheckReport repaired = CheckImage(path, RepairMode::kAll).value();
  EXPECT_EQ(repaired.corruptions, 0u);
  EXPECT_EQ(repaired.leaks, 0u);
  EXPECT_NE(ReadHeaderOf(path).refcount_table_offset, h.refcount_table_offset);
  EXPECT_EQ(ReadImage(path), contents);
  // The rebuilt image takes writes that allocate.
  auto disk = OpenImage(path, ImageFormat::kQcow2).value();
  ASSERT_TRUE(disk->Write(0, std::vector<uint8_t>(100, 9)).ok());
  ASSERT_TRUE(CreateImage(dir.File("unused"), {.size = 1}).ok());
}

TEST(CheckTest, DirtyImageIsRepairedOnReadWriteOpen) {
  TempDir dir;
  std::vector<uint8_t> contents;
  std::string path = MakeWrittenImage(dir, &contents);
  // A lazy-refcounts writer that died: dirty bit set, one refcount missing.
  uint64_t host = ReadBe64At(path, L2EntryOffset(path, 3 * kCluster)) & kOffsetMask;
  PokeRefcount(path, host / kCluster, 0);
  WriteBe64At(path, 72, kIncompatDirty);
  ASSERT_TRUE(OpenImage(path, ImageFormat::kQcow2, {.read_only = true}).ok());
  {
    auto disk = OpenImage(path, ImageFormat::kQcow2);
    ASSERT_TRUE(disk.ok()) << disk.error().message();
    ASSERT_TRUE((*disk)->Write(9 * 4096, std::vector<uint8_t>(4096, 1)).ok());
    std::memset(contents.data() + 9 * 4096, 1, 4096);
  }
  EXPECT_FALSE(ReadHeaderOf(path).dirty());
  CheckReport report = CheckImage(path, RepairMode::kNone).value();
  EXPECT_EQ(report.corruptions + report.leaks, 0u);
  EXPECT_EQ(ReadImage(path), contents);
}

TEST(CheckTest, CorruptBitRejectsReadWriteOpen) {
  TempDir dir;
  std::vector<uint8_t> contents;
  std::string path = MakeWrittenImage(dir, &contents);
  WriteBe64At(path, 72, kIncompatCorrupt);
  std::string hash = HashFile(path);
  auto opened = OpenImage(path, ImageFormat::kQcow2);
  ASSERT_FALSE(opened.ok());
  EXPECT_EQ(opened.error().message(),
            path + ": the image is marked corrupt; open it read-only, or repair it with "
                   "'forkvmm img check -r all'");
  EXPECT_EQ(HashFile(path), hash);
  EXPECT_EQ(ReadImage(path), contents);
  CheckReport repaired = CheckImage(path, RepairMode::kAll).value();
  EXPECT_EQ(repaired.corruptions, 0u);
  EXPECT_FALSE(ReadHeaderOf(path).corrupt());
}

TEST(CheckTest, WrongCopiedFlagIsFixed) {
  TempDir dir;
  std::vector<uint8_t> contents;
  std::string path = MakeWrittenImage(dir, &contents);
  uint64_t entry_offset = L2EntryOffset(path, 2 * kCluster);
  WriteBe64At(path, entry_offset, ReadBe64At(path, entry_offset) & ~kFlagCopied);
  CheckReport found = CheckImage(path, RepairMode::kNone).value();
  EXPECT_EQ(found.corruptions, 1u);
  CheckReport repaired = CheckImage(path, RepairMode::kAll).value();
  EXPECT_EQ(repaired.corruptions, 0u);
  EXPECT_NE(ReadBe64At(path, entry_offset) & kFlagCopied, 0u);
}

class CompressedClusterTest : public ::testing::TestWithParam<CompressionType> {};

TEST_P(CompressedClusterTest, ReadsAndCopiesOnWrite) {
  TempDir dir;
  std::vector<uint8_t> contents;
  std::string path = MakeWrittenImage(dir, &contents);
  // Replace guest cluster 5 with a compressed copy of new data appended to the file.
  std::vector<uint8_t> cluster(kCluster);
  for (size_t i = 0; i < cluster.size(); ++i) cluster[i] = static_cast<uint8_t>(i / 100);
  std::vector<uint8_t> packed = CompressCluster(GetParam(), cluster).value();
  std::vector<uint8_t> bytes = testing::ReadFileBytes(path);
  const uint64_t data_offset = bytes.size() + 512;  // deliberately not cluster-aligned
  bytes.resize(data_offset);
  bytes.insert(bytes.end(), packed.begin(), packed.end());
  if (GetParam() == CompressionType::kZstd) {
    StoreBe64(bytes.data() + 72, kIncompatCompression);
    bytes[104] = 1;
  }
  uint64_t entry_offset = L2EntryOffset(path, 5 * kCluster);
  StoreBe64(bytes.data() + entry_offset, EncodeCompressedEntry(data_offset, packed.size(), 16));
  testing::WriteFileBytes(path, bytes);
  std::memcpy(contents.data() + 5 * kCluster, cluster.data(), kCluster);
  // The replaced cluster leaks and the new one has no refcount: repair both.
  CheckReport repaired = CheckImage(path, RepairMode::kAll).value();
  ASSERT_EQ(repaired.corruptions, 0u);
  EXPECT_EQ(repaired.compressed_clusters, 1u);
  EXPECT_EQ(ReadImage(path), contents);

  {
    auto disk = OpenImage(path, ImageFormat::kQcow2).value();
    ASSERT_TRUE(disk->Write(5 * kCluster + 1000, std::vector<uint8_t>(10, 0xcc)).ok());
    std::memset(contents.data() + 5 * kCluster + 1000, 0xcc, 10);
  }
  CheckReport after = CheckImage(path, RepairMode::kNone).value();
  EXPECT_EQ(after.corruptions + after.leaks, 0u);
  EXPECT_EQ(after.compressed_clusters, 0u);
  EXPECT_EQ(ReadImage(path), contents);
}

INSTANTIATE_TEST_SUITE_P(Types, CompressedClusterTest,
                         ::testing::Values(CompressionType::kZlib, CompressionType::kZstd));

TEST(CheckTest, CorruptCompressedDataFailsTheRead) {
  TempDir dir;
  std::vector<uint8_t> contents;
  std::string path = MakeWrittenImage(dir, &contents);
  std::vector<uint8_t> bytes = testing::ReadFileBytes(path);
  uint64_t data_offset = bytes.size();
  bytes.resize(bytes.size() + 4096, 0xff);  // not a deflate stream
  StoreBe64(bytes.data() + L2EntryOffset(path, 0), EncodeCompressedEntry(data_offset, 4096, 16));
  testing::WriteFileBytes(path, bytes);
  auto disk = OpenImage(path, ImageFormat::kQcow2, {.read_only = true}).value();
  std::vector<uint8_t> out(512);
  Status read = disk->Read(0, out);
  ASSERT_FALSE(read.ok());
  EXPECT_EQ(read.error().message(),
            path + ": guest offset 0x0: invalid zlib compressed cluster (zlib error -3); the image "
                   "is corrupt");
}

}  // namespace
}  // namespace forkvmm::block::qcow2
