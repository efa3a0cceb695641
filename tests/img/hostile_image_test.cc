// Hostile and broken images: each must be rejected before use with one line
// that names the file and the reason, without crashing, hanging or large
// allocations, and without any change to the file.
#include <fmt/core.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <functional>

#include "devices/block/image.h"
#include "devices/block/qcow2_create.h"
#include "devices/block/qcow2_format.h"
#include "devices/block/test_support.h"
#include "tests/img/img_test_util.h"

namespace forkvmm::block {
namespace {

using testing::HashFile;
using testing::RunProcess;
using testing::TempDir;

// Limits for forkvmm-img on hostile input. The caps allow at most 32 MiB for
// an L1 table and 8 MiB for a refcount table, so 256 MiB of address space is
// plenty. Nothing here should take more than seconds of CPU.
constexpr testing::ProcessLimits kHostileLimits{.cpu_seconds = 20,
                                                .address_space_bytes = 256ull << 20};

// A valid 1 MiB image with 64 KiB clusters: header at 0, refcount table at
// 0x10000, refcount block at 0x20000, L1 table at 0x30000, file size 0x40000.
std::string MakeValidImage(const TempDir& dir, const std::string& name) {
  std::string path = dir.File(name);
  Status created = CreateImage(path, {.size = 1 << 20});
  EXPECT_TRUE(created.ok()) << created.error().message();
  return path;
}

void Patch(const std::string& path, const std::function<void(std::vector<uint8_t>&)>& change) {
  std::vector<uint8_t> bytes = testing::ReadFileBytes(path);
  change(bytes);
  testing::WriteFileBytes(path, bytes);
}

// Checks that `forkvmm img info` and read-only and read-write opens all
// reject `path` with exactly `reason`, that `img check` exits with
// `check_exit`, and that nothing changed the file.
void ExpectRejected(const std::string& path, const std::string& reason, int check_exit = 1) {
  SCOPED_TRACE(path);
  const std::string hash = HashFile(path);
  const std::string expected = path + ": " + reason;

  testing::ProcessResult info =
      RunProcess({testing::ForkvmmImg(), "img", "info", "-f", "qcow2", path}, kHostileLimits);
  EXPECT_EQ(info.signal, 0) << "forkvmm-img was killed by signal " << info.signal;
  EXPECT_EQ(info.exit_code, 1);
  EXPECT_EQ(info.out, "");
  EXPECT_EQ(info.err, "forkvmm: " + expected + "\n");

  auto read_only = OpenImage(path, ImageFormat::kQcow2, {.read_only = true});
  ASSERT_FALSE(read_only.ok());
  EXPECT_EQ(read_only.error().message(), expected);
  auto read_write = OpenImage(path, ImageFormat::kQcow2);
  ASSERT_FALSE(read_write.ok());
  EXPECT_EQ(read_write.error().message(), expected);

  // check must not crash either. It reports the image as unusable (1), or
  // as corrupt (2) when it can still count references.
  testing::ProcessResult check =
      RunProcess({testing::ForkvmmImg(), "img", "check", "-f", "qcow2", path}, kHostileLimits);
  EXPECT_EQ(check.signal, 0);
  EXPECT_EQ(check.exit_code, check_exit) << check.out << check.err;
  EXPECT_EQ(HashFile(path), hash) << "the file changed";
}

TEST(HostileImageTest, TruncatedFiles) {
  TempDir dir;
  std::string tiny = MakeValidImage(dir, "tiny.qcow2");
  ASSERT_EQ(truncate(tiny.c_str(), 50), 0);
  ExpectRejected(tiny, "truncated: the file has 50 bytes, fewer than a 72-byte qcow2 header");

  std::string header_only = MakeValidImage(dir, "header-only.qcow2");
  ASSERT_EQ(truncate(header_only.c_str(), 65536), 0);
  ExpectRejected(header_only,
                 "L1 table at offset 0x30000 extends past the end of the file (size 0x10000)", 2);

  std::string mid_header = MakeValidImage(dir, "mid-header.qcow2");
  ASSERT_EQ(truncate(mid_header.c_str(), 90), 0);
  ExpectRejected(mid_header, "truncated: a version 3 header needs 104 bytes, the file has 90");

  std::string empty = dir.File("empty.qcow2");
  testing::WriteFileBytes(empty, {});
  ExpectRejected(empty, "truncated: the file has 0 bytes, fewer than a 72-byte qcow2 header");
}

TEST(HostileImageTest, TablesOutsideTheFile) {
  TempDir dir;
  std::string l1_past = MakeValidImage(dir, "l1-past-eof.qcow2");
  Patch(l1_past, [](auto& b) { qcow2::StoreBe64(b.data() + 40, 0x100000); });
  // check reads tables past the end of the file as zeros, as qemu-img does,
  // and counts them as corruptions.
  ExpectRejected(l1_past,
                 "L1 table at offset 0x100000 extends past the end of the file (size 0x40000)",
                 2);

  std::string l1_header = MakeValidImage(dir, "l1-on-header.qcow2");
  Patch(l1_header, [](auto& b) { qcow2::StoreBe64(b.data() + 40, 0); });
  ExpectRejected(l1_header, "L1 table at offset 0x0 overlaps the header");

  std::string l1_wrap = MakeValidImage(dir, "l1-wraps.qcow2");
  Patch(l1_wrap, [](auto& b) { qcow2::StoreBe64(b.data() + 40, 0xffffffffffff0000ull); });
  ExpectRejected(l1_wrap, "L1 table at offset 0xffffffffffff0000 extends past the end of the file "
                          "(size 0x40000)");

  std::string refcount_past = MakeValidImage(dir, "refcount-past-eof.qcow2");
  Patch(refcount_past, [](auto& b) { qcow2::StoreBe64(b.data() + 48, 0x80000); });
  ExpectRejected(refcount_past,
                 "refcount table at offset 0x80000 extends past the end of the file (size "
                 "0x40000)",
                 2);

  std::string refcount_header = MakeValidImage(dir, "refcount-on-header.qcow2");
  Patch(refcount_header, [](auto& b) { qcow2::StoreBe64(b.data() + 48, 0); });
  ExpectRejected(refcount_header, "refcount table at offset 0x0 overlaps the header");

  std::string refcount_l1 = MakeValidImage(dir, "refcount-on-l1.qcow2");
  Patch(refcount_l1, [](auto& b) { qcow2::StoreBe64(b.data() + 48, 0x30000); });
  ExpectRejected(refcount_l1,
                 "refcount table at offset 0x30000 overlaps the L1 table at offset 0x30000");
}

TEST(HostileImageTest, HugeCounts) {
  TempDir dir;
  std::string huge_l1 = MakeValidImage(dir, "huge-l1.qcow2");
  Patch(huge_l1, [](auto& b) { qcow2::StoreBe32(b.data() + 36, 0xffffffff); });
  ExpectRejected(huge_l1, "L1 table of 4294967295 entries exceeds the limit of 32 MiB");

  std::string huge_refcount = MakeValidImage(dir, "huge-refcount.qcow2");
  Patch(huge_refcount, [](auto& b) { qcow2::StoreBe32(b.data() + 56, 0xffffffff); });
  ExpectRejected(huge_refcount,
                 "refcount table of 4294967295 clusters exceeds the limit of 8 MiB");

  std::string huge_size = MakeValidImage(dir, "huge-size.qcow2");
  Patch(huge_size, [](auto& b) { qcow2::StoreBe64(b.data() + 24, 1ull << 62); });
  ExpectRejected(huge_size, "L1 table has 1 entries, too few for the virtual size "
                            "4611686018427387904 (needs 8589934592)");

  std::string snapshots = MakeValidImage(dir, "snapshots.qcow2");
  Patch(snapshots, [](auto& b) { qcow2::StoreBe32(b.data() + 60, 0xffffffff); });
  ExpectRejected(snapshots, "4294967295 snapshots exceed the limit of 65536");
}

TEST(HostileImageTest, BadClusterBits) {
  TempDir dir;
  for (uint32_t bits : {0u, 8u, 22u, 63u, 0xffffffffu}) {
    std::string path = MakeValidImage(dir, fmt::format("bits-{}.qcow2", bits));
    Patch(path, [bits](auto& b) { qcow2::StoreBe32(b.data() + 20, bits); });
    ExpectRejected(path, fmt::format("invalid cluster_bits {} (supported: 9 to 21, 512 B to 2 MiB "
                                     "clusters)",
                                     bits));
  }
}

TEST(HostileImageTest, UnknownIncompatibleFeature) {
  TempDir dir;
  std::string unnamed = MakeValidImage(dir, "unnamed.qcow2");
  Patch(unnamed, [](auto& b) { qcow2::StoreBe64(b.data() + 72, 1ull << 33); });
  ExpectRejected(unnamed, "uses unsupported incompatible features: bit 33");

  // With a feature name table that names the bit, the message uses the name.
  std::string named = MakeValidImage(dir, "named.qcow2");
  Patch(named, [](auto& b) {
    qcow2::Header h = qcow2::ParseHeader(b, b.size()).value();
    h.feature_names.push_back({0, 7, "time travel"});
    h.incompatible_features |= 1ull << 7;
    std::vector<uint8_t> head = qcow2::SerializeHeader(h).value();
    std::copy(head.begin(), head.end(), b.begin());
  });
  ExpectRejected(named, "uses unsupported incompatible features: 'time travel' (bit 7)");
}

TEST(HostileImageTest, EncryptedImages) {
  TempDir dir;
  std::string aes = MakeValidImage(dir, "aes.qcow2");
  Patch(aes, [](auto& b) { qcow2::StoreBe32(b.data() + 32, 1); });
  ExpectRejected(aes, "is encrypted (AES), which forkvmm does not support");
  std::string unknown = MakeValidImage(dir, "crypt9.qcow2");
  Patch(unknown, [](auto& b) { qcow2::StoreBe32(b.data() + 32, 9); });
  ExpectRejected(unknown, "uses unknown encryption method 9");

  if (!testing::HaveQemu()) GTEST_SKIP() << "qemu-img not found; LUKS image not tested";
  std::string luks = dir.File("luks.qcow2");
  testing::ProcessResult made = RunProcess(
      {"qemu-img", "create", "-q", "-f", "qcow2", "--object", "secret,id=sec0,data=password",
       "-o", "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10", luks, "1M"});
  ASSERT_EQ(made.exit_code, 0) << made.err;
  ExpectRejected(luks, "is encrypted (LUKS), which forkvmm does not support");
}

TEST(HostileImageTest, UnsupportedQemuFeatures) {
  SKIP_WITHOUT_QEMU();
  TempDir dir;
  std::string extended = dir.File("extended-l2.qcow2");
  ASSERT_EQ(RunProcess({"qemu-img", "create", "-q", "-f", "qcow2", "-o", "extended_l2=on",
                        extended, "1M"})
                .exit_code,
            0);
  ExpectRejected(extended, "uses extended L2 entries (subclusters), which forkvmm does not "
                           "support");
  std::string data_file = dir.File("data-file.qcow2");
  ASSERT_EQ(RunProcess({"qemu-img", "create", "-q", "-f", "qcow2", "-o",
                        "data_file=" + dir.File("data.raw"), data_file, "1M"})
                .exit_code,
            0);
  ExpectRejected(data_file, "uses an external data file, which forkvmm does not support");
}

TEST(HostileImageTest, BadVersionAndMagic) {
  TempDir dir;
  std::string version = MakeValidImage(dir, "v4.qcow2");
  Patch(version, [](auto& b) { qcow2::StoreBe32(b.data() + 4, 4); });
  ExpectRejected(version, "unsupported qcow2 version 4 (supported: 2, 3)");
  std::string magic = MakeValidImage(dir, "magic.qcow2");
  Patch(magic, [](auto& b) { b[3] = 0; });
  ExpectRejected(magic, "not a qcow2 image (bad magic)");
}

TEST(HostileImageTest, MissingBackingFile) {
  TempDir dir;
  MakeValidImage(dir, "base.qcow2");
  ASSERT_TRUE(CreateOverlay(dir.File("top.qcow2"), "base.qcow2", ImageFormat::kQcow2).ok());
  ASSERT_EQ(unlink(dir.File("base.qcow2").c_str()), 0);
  std::string top = dir.File("top.qcow2");
  const std::string hash = HashFile(top);
  const std::string expected = top + ": cannot open backing file 'base.qcow2' (resolved to '" +
                               dir.File("base.qcow2") + "'): No such file or directory";
  // info looks at one layer only; --backing-chain and opening the disk need all.
  testing::ProcessResult info =
      RunProcess({testing::ForkvmmImg(), "img", "info", "--backing-chain", top}, kHostileLimits);
  EXPECT_EQ(info.exit_code, 1);
  EXPECT_EQ(info.err, "forkvmm: " + expected + "\n");
  auto opened = OpenImage(top, ImageFormat::kQcow2);
  ASSERT_FALSE(opened.ok());
  EXPECT_EQ(opened.error().message(), expected);
  EXPECT_EQ(HashFile(top), hash);
}

TEST(HostileImageTest, BackingChainLoop) {
  TempDir dir;
  std::string a = MakeValidImage(dir, "a.qcow2");
  ASSERT_TRUE(CreateOverlay(dir.File("b.qcow2"), "a.qcow2", ImageFormat::kQcow2).ok());
  {
    auto file = ImageFile::Open(a, true).value();
    ASSERT_TRUE(qcow2::SetBackingFile(file, "b.qcow2", "qcow2").ok());
  }
  const std::string hash_a = HashFile(a);
  const std::string hash_b = HashFile(dir.File("b.qcow2"));
  const std::string expected =
      a + ": backing file 'b.qcow2' is already in the backing chain, which would make a loop";
  testing::ProcessResult info = RunProcess(
      {testing::ForkvmmImg(), "img", "info", "--backing-chain", dir.File("b.qcow2")},
      kHostileLimits);
  EXPECT_EQ(info.signal, 0);
  EXPECT_EQ(info.exit_code, 1);
  EXPECT_EQ(info.err, "forkvmm: " + expected + "\n");
  auto opened = OpenImage(dir.File("b.qcow2"), ImageFormat::kQcow2);
  ASSERT_FALSE(opened.ok());
  EXPECT_EQ(opened.error().message(), expected);
  // info without --backing-chain and check open no backing file, but they
  // follow the names and reject the loop too.
  for (const char* command : {"info", "check"}) {
    testing::ProcessResult result =
        RunProcess({testing::ForkvmmImg(), "img", command, dir.File("b.qcow2")}, kHostileLimits);
    EXPECT_EQ(result.signal, 0) << command;
    EXPECT_EQ(result.exit_code, 1) << command;
    EXPECT_EQ(result.out, "") << command;
    EXPECT_EQ(result.err, "forkvmm: " + expected + "\n") << command;
  }
  const std::string self = MakeValidImage(dir, "self.qcow2");
  {
    auto file = ImageFile::Open(self, true).value();
    ASSERT_TRUE(qcow2::SetBackingFile(file, "self.qcow2", "qcow2").ok());
  }
  testing::ProcessResult check =
      RunProcess({testing::ForkvmmImg(), "img", "check", self}, kHostileLimits);
  EXPECT_EQ(check.exit_code, 1);
  EXPECT_EQ(check.err, "forkvmm: " + self +
                           ": backing file 'self.qcow2' is already in the backing chain, which "
                           "would make a loop\n");
  EXPECT_EQ(HashFile(a), hash_a);
  EXPECT_EQ(HashFile(dir.File("b.qcow2")), hash_b);
}

TEST(HostileImageTest, BackingFormatNotRecorded) {
  TempDir dir;
  std::string top = MakeValidImage(dir, "top.qcow2");
  testing::WriteFileBytes(dir.File("disk.raw"), std::vector<uint8_t>(4096, 0));
  {
    auto file = ImageFile::Open(top, true).value();
    ASSERT_TRUE(qcow2::SetBackingFile(file, "disk.raw", "").ok());
  }
  const std::string hash = HashFile(top);
  auto opened = OpenImage(top, ImageFormat::kQcow2);
  ASSERT_FALSE(opened.ok());
  EXPECT_EQ(opened.error().message(),
            top + ": backing file 'disk.raw' has no recorded format, and forkvmm does not guess "
                  "formats; record it with 'forkvmm img rebase -u -b disk.raw -F raw|qcow2 " +
                top + "'");
  EXPECT_EQ(HashFile(top), hash);
}

TEST(HostileImageTest, CorruptBitRejectsReadWriteOnly) {
  TempDir dir;
  std::string path = MakeValidImage(dir, "corrupt.qcow2");
  Patch(path, [](auto& b) { qcow2::StoreBe64(b.data() + 72, qcow2::kIncompatCorrupt); });
  const std::string hash = HashFile(path);
  auto opened = OpenImage(path, ImageFormat::kQcow2);
  ASSERT_FALSE(opened.ok());
  EXPECT_EQ(opened.error().message(),
            path + ": the image is marked corrupt; open it read-only, or repair it with "
                   "'forkvmm img check -r all'");
  EXPECT_TRUE(OpenImage(path, ImageFormat::kQcow2, {.read_only = true}).ok());
  EXPECT_EQ(HashFile(path), hash);
}

// Broken tables behind a valid header: the open succeeds, and each I/O that
// meets the damage fails with a message instead of touching memory or the
// file out of bounds.
TEST(HostileImageTest, BrokenTablesFailTheRequestOnly) {
  TempDir dir;
  std::string path = MakeValidImage(dir, "tables.qcow2");
  {
    auto disk = OpenImage(path, ImageFormat::kQcow2).value();
    ASSERT_TRUE(disk->Write(0, std::vector<uint8_t>(2 * 65536, 7)).ok());
  }
  std::vector<uint8_t> bytes = testing::ReadFileBytes(path);
  const uint64_t l2 = qcow2::LoadBe64(bytes.data() + 0x30000) & qcow2::kOffsetMask;
  // Entry 0: a data cluster far past the end of the file. Entry 1: reserved bits.
  Patch(path, [&](auto& b) {
    qcow2::StoreBe64(b.data() + l2, qcow2::kFlagCopied | (1ull << 50));
    qcow2::StoreBe64(b.data() + l2 + 8, qcow2::kFlagCopied | 0x50000 | 0x100);
  });
  const std::string hash = HashFile(path);
  auto disk = OpenImage(path, ImageFormat::kQcow2);
  ASSERT_TRUE(disk.ok()) << disk.error().message();
  std::vector<uint8_t> buffer(512);
  Status past = (*disk)->Read(0, buffer);
  ASSERT_FALSE(past.ok());
  EXPECT_EQ(past.error().message(),
            path + ": guest offset 0x0: data cluster at host offset 0x4000000000000 is past the "
                   "end of the file (size 0x70000); the image is corrupt");
  Status write_past = (*disk)->Write(100, buffer);
  ASSERT_FALSE(write_past.ok());
  EXPECT_EQ(write_past.error().message(),
            path + ": guest offset 0x64: data cluster at host offset 0x4000000000000 is past the "
                   "end of the file (size 0x70000); the image is corrupt");
  Status reserved = (*disk)->Read(65536, buffer);
  ASSERT_FALSE(reserved.ok());
  EXPECT_EQ(reserved.error().message(),
            path + ": guest offset 0x10000: L2 entry 0x8000000000050100 has reserved bits set; "
                   "the image is corrupt");
  disk->reset();
  EXPECT_EQ(HashFile(path), hash);
}

TEST(HostileImageTest, L2TableOutsideTheFile) {
  TempDir dir;
  std::string path = MakeValidImage(dir, "l2-outside.qcow2");
  Patch(path, [](auto& b) { qcow2::StoreBe64(b.data() + 0x30000, qcow2::kFlagCopied | 0x7770000); });
  const std::string hash = HashFile(path);
  auto disk = OpenImage(path, ImageFormat::kQcow2).value();
  std::vector<uint8_t> buffer(512, 1);
  Status read = disk->Read(4096, buffer);
  ASSERT_FALSE(read.ok());
  EXPECT_EQ(read.error().message(),
            path + ": guest offset 0x1000: L2 table at offset 0x7770000 is outside the file "
                   "(size 0x40000); the image is corrupt");
  EXPECT_FALSE(disk->Write(4096, buffer).ok());
  disk.reset();
  EXPECT_EQ(HashFile(path), hash);
}

}  // namespace
}  // namespace forkvmm::block
