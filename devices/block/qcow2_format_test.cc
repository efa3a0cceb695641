#include "devices/block/qcow2_format.h"

#include <gtest/gtest.h>

#include "devices/block/qcow2_refcount.h"

namespace forkvmm::block::qcow2 {
namespace {

// A valid v3 image layout in a 64 KiB-cluster file of 4 clusters: header,
// refcount table at 0x10000, refcount block at 0x20000, L1 at 0x30000.
constexpr uint64_t kFileSize = 4 * 65536;

std::vector<uint8_t> ValidHead() {
  Header h;
  h.size = 1 << 30;
  h.cluster_bits = 16;
  h.l1_size = 2;
  h.l1_table_offset = 0x30000;
  h.refcount_table_offset = 0x10000;
  h.refcount_table_clusters = 1;
  h.feature_names = StandardFeatureNames();
  return SerializeHeader(h).value();
}

std::string ParseError(const std::vector<uint8_t>& head, uint64_t file_size = kFileSize) {
  Result<Header> parsed = ParseHeader(head, file_size);
  return parsed.ok() ? "parsed" : parsed.error().message();
}

TEST(ParseHeaderTest, AcceptsValidHeader) {
  Result<Header> parsed = ParseHeader(ValidHead(), kFileSize);
  ASSERT_TRUE(parsed.ok()) << parsed.error().message();
  EXPECT_EQ(parsed->version, 3u);
  EXPECT_EQ(parsed->cluster_size(), 65536u);
  EXPECT_EQ(parsed->refcount_bits(), 16u);
  EXPECT_EQ(parsed->feature_names.size(), StandardFeatureNames().size());
}

TEST(ParseHeaderTest, RejectsEachBadField) {
  struct Case {
    const char* name;
    void (*patch)(std::vector<uint8_t>&);
    std::string expected;
  };
  const Case cases[] = {
      {"magic", [](auto& h) { h[0] = 'X'; }, "not a qcow2 image (bad magic)"},
      {"version", [](auto& h) { StoreBe32(h.data() + 4, 4); },
       "unsupported qcow2 version 4 (supported: 2, 3)"},
      {"cluster bits low", [](auto& h) { StoreBe32(h.data() + 20, 8); },
       "invalid cluster_bits 8 (supported: 9 to 21, 512 B to 2 MiB clusters)"},
      {"cluster bits high", [](auto& h) { StoreBe32(h.data() + 20, 22); },
       "invalid cluster_bits 22 (supported: 9 to 21, 512 B to 2 MiB clusters)"},
      {"aes", [](auto& h) { StoreBe32(h.data() + 32, 1); },
       "is encrypted (AES), which forkvmm does not support"},
      {"luks", [](auto& h) { StoreBe32(h.data() + 32, 2); },
       "is encrypted (LUKS), which forkvmm does not support"},
      {"unknown incompatible bit", [](auto& h) { StoreBe64(h.data() + 72, 1ull << 9); },
       "uses unsupported incompatible features: bit 9"},
      {"external data file", [](auto& h) { StoreBe64(h.data() + 72, kIncompatDataFile); },
       "uses an external data file, which forkvmm does not support"},
      {"extended l2", [](auto& h) { StoreBe64(h.data() + 72, kIncompatExtendedL2); },
       "uses extended L2 entries (subclusters), which forkvmm does not support"},
      {"refcount order", [](auto& h) { StoreBe32(h.data() + 96, 7); },
       "invalid refcount_order 7 (at most 6, 64-bit refcounts)"},
      {"huge l1", [](auto& h) { StoreBe32(h.data() + 36, 0x10000000); },
       "L1 table of 268435456 entries exceeds the limit of 32 MiB"},
      {"l1 too small", [](auto& h) { StoreBe32(h.data() + 36, 1); },
       "L1 table has 1 entries, too few for the virtual size 1073741824 (needs 2)"},
      {"l1 past eof", [](auto& h) { StoreBe64(h.data() + 40, 0x40000); },
       "L1 table at offset 0x40000 extends past the end of the file (size 0x40000)"},
      {"l1 on header", [](auto& h) { StoreBe64(h.data() + 40, 0); },
       "L1 table at offset 0x0 overlaps the header"},
      {"l1 misaligned", [](auto& h) { StoreBe64(h.data() + 40, 0x30008); },
       "L1 table offset 0x30008 is not aligned to the cluster size 65536"},
      {"refcount past eof", [](auto& h) { StoreBe64(h.data() + 48, 0x50000); },
       "refcount table at offset 0x50000 extends past the end of the file (size 0x40000)"},
      {"refcount on header", [](auto& h) { StoreBe64(h.data() + 48, 0); },
       "refcount table at offset 0x0 overlaps the header"},
      {"refcount on l1", [](auto& h) { StoreBe64(h.data() + 48, 0x30000); },
       "refcount table at offset 0x30000 overlaps the L1 table at offset 0x30000"},
      {"refcount empty", [](auto& h) { StoreBe32(h.data() + 56, 0); },
       "the refcount table is empty"},
      {"huge refcount table", [](auto& h) { StoreBe32(h.data() + 56, 1000); },
       "refcount table of 1000 clusters exceeds the limit of 8 MiB"},
      {"header length", [](auto& h) { StoreBe32(h.data() + 100, 100); },
       "invalid header length 100 (must be a multiple of 8 from 104 to the cluster size 65536)"},
      {"compression type", [](auto& h) { h[104] = 1; },
       "the compression type bit is clear but compression_type is 1"},
      {"snapshots", [](auto& h) { StoreBe32(h.data() + 60, 100000); },
       "100000 snapshots exceed the limit of 65536"},
  };
  for (const Case& c : cases) {
    std::vector<uint8_t> head = ValidHead();
    c.patch(head);
    EXPECT_EQ(ParseError(head), c.expected) << c.name;
  }
}

TEST(ParseHeaderTest, NamesUnknownFeatureFromTable) {
  Header h;
  h.size = 65536;
  h.l1_size = 1;
  h.l1_table_offset = 0x30000;
  h.refcount_table_offset = 0x10000;
  h.refcount_table_clusters = 1;
  h.feature_names = {{0, 12, "quantum entanglement"}};
  std::vector<uint8_t> head = SerializeHeader(h).value();
  StoreBe64(head.data() + 72, (1ull << 12) | (1ull << 40));
  EXPECT_EQ(ParseError(head),
            "uses unsupported incompatible features: 'quantum entanglement' (bit 12), bit 40");
}

TEST(ParseHeaderTest, RejectsTruncatedFiles) {
  std::vector<uint8_t> head = ValidHead();
  EXPECT_EQ(ParseError(std::vector<uint8_t>(head.begin(), head.begin() + 50), 50),
            "truncated: the file has 50 bytes, fewer than a 72-byte qcow2 header");
  EXPECT_EQ(ParseError(std::vector<uint8_t>(head.begin(), head.begin() + 90), 90),
            "truncated: a version 3 header needs 104 bytes, the file has 90");
  EXPECT_EQ(ParseError(std::vector<uint8_t>(head.begin(), head.begin() + 200), 200),
            "truncated: header extension 0x6803f857 at offset 0x70 extends past the end of the "
            "file (size 0xc8)");
}

TEST(ParseHeaderTest, BackingFileRoundTrip) {
  Header h;
  h.size = 65536;
  h.l1_size = 1;
  h.l1_table_offset = 0x30000;
  h.refcount_table_offset = 0x10000;
  h.refcount_table_clusters = 1;
  h.backing_file = "../base image.qcow2";
  h.backing_format = "qcow2";
  h.other_extensions = {{0x12345678, {1, 2, 3}}};
  std::vector<uint8_t> head = SerializeHeader(h).value();
  Result<Header> parsed = ParseHeader(head, kFileSize);
  ASSERT_TRUE(parsed.ok()) << parsed.error().message();
  EXPECT_EQ(parsed->backing_file, "../base image.qcow2");
  EXPECT_EQ(parsed->backing_format, "qcow2");
  ASSERT_EQ(parsed->other_extensions.size(), 1u);
  EXPECT_EQ(parsed->other_extensions[0].data, (std::vector<uint8_t>{1, 2, 3}));
}

TEST(ParseHeaderTest, RejectsBadBackingName) {
  Header h;
  h.size = 65536;
  h.l1_size = 1;
  h.l1_table_offset = 0x30000;
  h.refcount_table_offset = 0x10000;
  h.refcount_table_clusters = 1;
  h.backing_file = "base";
  std::vector<uint8_t> head = SerializeHeader(h).value();
  std::vector<uint8_t> nul = head;
  nul[h.backing_file_offset + 1] = 0;
  EXPECT_EQ(ParseError(nul), "the backing file name contains a NUL byte");
  std::vector<uint8_t> long_name = head;
  StoreBe32(long_name.data() + 16, 2000);
  EXPECT_EQ(ParseError(long_name), "invalid backing file name length 2000 (must be 1 to 1023)");
  std::vector<uint8_t> outside = head;
  StoreBe64(outside.data() + 8, 65534);
  EXPECT_EQ(ParseError(outside),
            "backing file name at offset 0xfffe (4 bytes) is outside the header cluster");
}

TEST(DecodeL2EntryTest, DecodesEachType) {
  EXPECT_EQ(DecodeL2Entry(0, 16, 3)->type, ClusterType::kUnallocated);
  Result<L2Entry> normal = DecodeL2Entry(0x50000 | kFlagCopied, 16, 3);
  ASSERT_TRUE(normal.ok());
  EXPECT_EQ(normal->type, ClusterType::kNormal);
  EXPECT_EQ(normal->host_offset, 0x50000u);
  EXPECT_TRUE(normal->copied);
  EXPECT_EQ(DecodeL2Entry(kFlagZero, 16, 3)->type, ClusterType::kZero);
  Result<L2Entry> compressed = DecodeL2Entry(EncodeCompressedEntry(0x50123, 1000, 16), 16, 3);
  ASSERT_TRUE(compressed.ok());
  EXPECT_EQ(compressed->type, ClusterType::kCompressed);
  EXPECT_EQ(compressed->host_offset, 0x50123u);
  EXPECT_GE(compressed->compressed_size, 1000u);
}

TEST(DecodeL2EntryTest, RejectsInvalidEntries) {
  EXPECT_EQ(DecodeL2Entry(0x50000 | 2, 16, 3).error().message(),
            "L2 entry 0x50002 has reserved bits set");
  EXPECT_EQ(DecodeL2Entry(0x50200, 16, 3).error().message(),
            "L2 entry 0x50200 points to host offset 0x50200, which is not aligned to the "
            "cluster size 65536");
  EXPECT_EQ(DecodeL2Entry(kFlagZero, 16, 2).error().message(),
            "L2 entry 0x1 has the zero flag in a version 2 image");
  EXPECT_EQ(DecodeL2Entry(kFlagCopied, 16, 3).error().message(),
            "L2 entry 0x8000000000000000 points to host offset 0 (the header)");
}

TEST(RefcountEntryTest, EveryWidthRoundTrips) {
  for (uint32_t order = 0; order <= 6; ++order) {
    std::vector<uint8_t> block(512, 0);
    const uint64_t entries = 512 * 8 >> order;
    const uint64_t max = order == 6 ? UINT64_MAX : (uint64_t{1} << (1u << order)) - 1;
    for (uint64_t i = 0; i < entries; ++i) SetRefcountEntry(block.data(), i, order, i % 3 == 0 ? max : i & max);
    for (uint64_t i = 0; i < entries; ++i) {
      ASSERT_EQ(GetRefcountEntry(block.data(), i, order), i % 3 == 0 ? max : i & max)
          << "order " << order << " entry " << i;
    }
  }
}

TEST(RefcountEntryTest, SubByteEntriesStartAtLeastSignificantBit) {
  uint8_t block[1] = {0};
  SetRefcountEntry(block, 0, 0, 1);  // 1-bit entry 0 is bit 0
  SetRefcountEntry(block, 3, 0, 1);
  EXPECT_EQ(block[0], 0x09);
  uint8_t nibbles[1] = {0};
  SetRefcountEntry(nibbles, 1, 2, 0xa);  // 4-bit entry 1 is the high nibble
  EXPECT_EQ(nibbles[0], 0xa0);
}

}  // namespace
}  // namespace forkvmm::block::qcow2
