// Interoperability with QEMU's own tools: images that qemu-img and qemu-io
// write must read byte-for-byte like `qemu-img convert -O raw` shows them,
// and images forkvmm writes must pass `qemu-img check` and `qemu-img compare`.
#include <fmt/core.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <cstring>
#include <random>

#include "devices/block/image.h"
#include "devices/block/qcow2_check.h"
#include "devices/block/qcow2_format.h"
#include "devices/block/qcow2_refcount.h"
#include "devices/block/test_support.h"
#include "tests/img/img_test_util.h"

namespace forkvmm::block {
namespace {

using testing::RandomBytes;
using testing::RunProcess;
using testing::TempDir;

// Runs a command that must succeed.
void MustRun(const std::vector<std::string>& argv) {
  testing::ProcessResult result = RunProcess(argv);
  ASSERT_EQ(result.exit_code, 0) << argv[0] << " " << (argv.size() > 1 ? argv[1] : "") << ": "
                                 << result.err << result.out;
}

void QemuIo(const std::string& image, const std::vector<std::string>& commands,
            const std::string& format = "qcow2") {
  std::vector<std::string> argv = {"qemu-io", "-f", format};
  for (const std::string& c : commands) {
    argv.push_back("-c");
    argv.push_back(c);
  }
  argv.push_back(image);
  MustRun(argv);
}

std::vector<uint8_t> ReadWithQemu(const TempDir& dir, const std::string& image) {
  const std::string out = dir.File("qemu-view.raw");
  testing::ProcessResult result = RunProcess({"qemu-img", "convert", "-O", "raw", image, out});
  EXPECT_EQ(result.exit_code, 0) << result.err;
  return testing::ReadFileBytes(out);
}

std::vector<uint8_t> ReadWithForkvmm(const std::string& image) {
  auto disk = OpenImage(image, ImageFormat::kQcow2, {.read_only = true});
  EXPECT_TRUE(disk.ok()) << disk.error().message();
  if (!disk.ok()) return {};
  std::vector<uint8_t> out((*disk)->size());
  Status read = (*disk)->Read(0, out);
  EXPECT_TRUE(read.ok()) << read.error().message();
  return out;
}

// Compares two disk views and names the first differing byte.
void ExpectSameDisk(const std::vector<uint8_t>& ours, const std::vector<uint8_t>& theirs,
                    const std::string& what) {
  ASSERT_EQ(ours.size(), theirs.size()) << what;
  auto diff = std::mismatch(ours.begin(), ours.end(), theirs.begin());
  EXPECT_TRUE(diff.first == ours.end())
      << what << ": first difference at byte " << (diff.first - ours.begin());
}

void ExpectQemuCheckClean(const std::string& image) {
  testing::ProcessResult check = RunProcess({"qemu-img", "check", image});
  EXPECT_EQ(check.exit_code, 0) << image << ":\n" << check.out << check.err;
}

void ExpectQemuCompareEqual(const TempDir& dir, const std::string& image,
                            const std::vector<uint8_t>& expected) {
  testing::WriteFileBytes(dir.File("expected.raw"), expected);
  testing::ProcessResult compare =
      RunProcess({"qemu-img", "compare", "-F", "raw", image, dir.File("expected.raw")});
  EXPECT_EQ(compare.exit_code, 0) << image << ": " << compare.out << compare.err;
}

struct Layout {
  uint64_t cluster;
  const char* compat;
};

class QemuWrittenImageTest : public ::testing::TestWithParam<Layout> {};

TEST_P(QemuWrittenImageTest, ReadsLikeQemuConvert) {
  SKIP_WITHOUT_QEMU();
  const auto [cluster, compat] = GetParam();
  TempDir dir;
  const std::string image = dir.File("a.qcow2");
  const uint64_t size = std::max<uint64_t>(8 << 20, 6 * cluster) + 3 * 512;
  MustRun({"qemu-img", "create", "-q", "-f", "qcow2", "-o",
           fmt::format("cluster_size={},compat={}", cluster, compat), image,
           std::to_string(size)});
  QemuIo(image, {
                    fmt::format("write -P 0xa1 0 {}", cluster + 512),
                    fmt::format("write -P 0xb2 {} 7168", 3 * cluster - 1024),
                    fmt::format("write -P 0xc3 {} {}", 2 * cluster, 2 * cluster),
                    fmt::format("write -z {} {}", 2 * cluster, cluster),
                    fmt::format("discard {} {}", 4 * cluster, cluster),
                    fmt::format("write -P 0xd4 {} 512", size - 512),
                    fmt::format("write -P 0xe5 {} 4096", size / 2),
                });
  ExpectSameDisk(ReadWithForkvmm(image), ReadWithQemu(dir, image),
                 fmt::format("cluster {} compat {}", cluster, compat));
}

std::vector<Layout> AllLayouts() {
  std::vector<Layout> layouts;
  for (uint64_t cluster = 512; cluster <= (2u << 20); cluster *= 2) {
    layouts.push_back({cluster, "0.10"});
    layouts.push_back({cluster, "1.1"});
  }
  return layouts;
}

INSTANTIATE_TEST_SUITE_P(EveryClusterSize, QemuWrittenImageTest, ::testing::ValuesIn(AllLayouts()),
                         [](const auto& test) {
                           return fmt::format("c{}_v{}", test.param.cluster,
                                              test.param.compat[0] == '0' ? 2 : 3);
                         });

TEST(QemuInteropTest, ZeroClustersOverBacking) {
  SKIP_WITHOUT_QEMU();
  for (const char* compat : {"0.10", "1.1"}) {
    TempDir dir;
    MustRun({"qemu-img", "create", "-q", "-f", "raw", dir.File("base.raw"), "4M"});
    QemuIo(dir.File("base.raw"), {"write -P 0x5a 0 4M"}, "raw");
    const std::string top = dir.File("top.qcow2");
    MustRun({"qemu-img", "create", "-q", "-f", "qcow2", "-o",
             std::string("cluster_size=65536,compat=") + compat, "-b", "base.raw", "-F", "raw",
             top});
    QemuIo(top, {"write -z 0 128k", "write -z -u 256k 64k", "write -z 1000k 3k",
                 "write -P 0x11 2M 64k", "write -z 2M 64k"});
    ExpectSameDisk(ReadWithForkvmm(top), ReadWithQemu(dir, top), compat);
  }
}

class CompressedImageTest : public ::testing::TestWithParam<std::string> {};

TEST_P(CompressedImageTest, ReadsAndRewritesQemuCompressedImage) {
  SKIP_WITHOUT_QEMU();
  TempDir dir;
  // Half compressible text, half random, so some clusters stay uncompressed.
  std::vector<uint8_t> source(4 << 20);
  for (size_t i = 0; i < source.size() / 2; ++i) source[i] = "forkvmm compressed "[i % 19];
  std::vector<uint8_t> noise = RandomBytes(source.size() / 2, 4);
  std::copy(noise.begin(), noise.end(), source.begin() + source.size() / 2);
  testing::WriteFileBytes(dir.File("src.raw"), source);
  const std::string image = dir.File("c.qcow2");
  MustRun({"qemu-img", "convert", "-c", "-O", "qcow2", "-o",
           "compression_type=" + GetParam(), dir.File("src.raw"), image});
  auto check = qcow2::CheckImage(image, qcow2::RepairMode::kNone);
  ASSERT_TRUE(check.ok()) << check.error().message();
  EXPECT_GT(check->compressed_clusters, 0u);
  EXPECT_EQ(check->corruptions + check->leaks, 0u);
  ExpectSameDisk(ReadWithForkvmm(image), source, GetParam());

  // Writes into compressed clusters copy them into normal clusters.
  std::vector<uint8_t> expected = source;
  {
    auto disk = OpenImage(image, ImageFormat::kQcow2).value();
    for (uint64_t offset : {uint64_t{1000}, uint64_t{70000}, uint64_t{(1 << 20) + 5}}) {
      std::vector<uint8_t> patch = RandomBytes(3000, static_cast<uint32_t>(offset));
      ASSERT_TRUE(disk->Write(offset, patch).ok());
      std::memcpy(expected.data() + offset, patch.data(), patch.size());
    }
  }
  ExpectQemuCheckClean(image);
  ExpectQemuCompareEqual(dir, image, expected);
}

INSTANTIATE_TEST_SUITE_P(Types, CompressedImageTest, ::testing::Values("zlib", "zstd"));

TEST(QemuInteropTest, FourLayerChainWithMixedClusterSizes) {
  SKIP_WITHOUT_QEMU();
  TempDir dir;
  // base.raw <- l1 (512 B clusters) <- l2 (64 KiB) <- top (2 MiB)
  MustRun({"qemu-img", "create", "-q", "-f", "raw", dir.File("base.raw"), "16M"});
  QemuIo(dir.File("base.raw"), {"write -P 0x01 0 16M"}, "raw");
  struct Layer {
    const char* name;
    const char* backing;
    const char* backing_format;
    const char* cluster;
  };
  const Layer layers[] = {{"l1.qcow2", "base.raw", "raw", "512"},
                          {"l2.qcow2", "l1.qcow2", "qcow2", "65536"},
                          {"top.qcow2", "l2.qcow2", "qcow2", "2M"}};
  int pattern = 0x10;
  for (const Layer& layer : layers) {
    MustRun({"qemu-img", "create", "-q", "-f", "qcow2", "-o",
             std::string("cluster_size=") + layer.cluster, "-b", layer.backing, "-F",
             layer.backing_format, dir.File(layer.name)});
    QemuIo(dir.File(layer.name),
           {fmt::format("write -P {} {} 1M", pattern, pattern * 100000),
            fmt::format("write -P {} {} 4k", pattern + 1, 15 * 1024 * 1024 + pattern * 512),
            fmt::format("write -z {} 512k", pattern * 200000)});
    pattern += 0x10;
  }
  ExpectSameDisk(ReadWithForkvmm(dir.File("top.qcow2")), ReadWithQemu(dir, dir.File("top.qcow2")),
                 "4-layer chain");
}

TEST(QemuInteropTest, QcowChainFourDeep) {
  SKIP_WITHOUT_QEMU();
  TempDir dir;
  const char* clusters[] = {"4096", "512", "1M", "65536"};
  std::string backing;
  for (int i = 0; i < 4; ++i) {
    std::string name = fmt::format("layer{}.qcow2", i);
    std::vector<std::string> argv = {"qemu-img", "create", "-q", "-f", "qcow2", "-o",
                                     std::string("cluster_size=") + clusters[i]};
    if (!backing.empty()) {
      argv.insert(argv.end(), {"-b", backing, "-F", "qcow2"});
    }
    argv.push_back(dir.File(name));
    if (backing.empty()) argv.push_back("8M");
    MustRun(argv);
    QemuIo(dir.File(name), {fmt::format("write -P {} {} 600k", 0x20 + i, i * 1500000)});
    backing = name;
  }
  ExpectSameDisk(ReadWithForkvmm(dir.File("layer3.qcow2")),
                 ReadWithQemu(dir, dir.File("layer3.qcow2")), "qcow2 chain");
}

TEST(QemuInteropTest, BackingShorterThanOverlay) {
  SKIP_WITHOUT_QEMU();
  TempDir dir;
  testing::WriteFileBytes(dir.File("short.raw"), RandomBytes((3 << 19) + 512, 9));
  const std::string top = dir.File("top.qcow2");
  MustRun({"qemu-img", "create", "-q", "-f", "qcow2", "-b", "short.raw", "-F", "raw", top, "4M"});
  QemuIo(top, {"write -P 0x77 1536k 4k", "write -P 0x78 3M 1k"});
  std::vector<uint8_t> ours = ReadWithForkvmm(top);
  ExpectSameDisk(ours, ReadWithQemu(dir, top), "short backing");
  // And our own copy-on-write over the backing file's end.
  std::vector<uint8_t> expected = ours;
  {
    auto disk = OpenImage(top, ImageFormat::kQcow2).value();
    std::vector<uint8_t> patch = RandomBytes(70000, 10);
    ASSERT_TRUE(disk->Write(1500000, patch).ok());
    std::memcpy(expected.data() + 1500000, patch.data(), patch.size());
  }
  ExpectQemuCheckClean(top);
  ExpectQemuCompareEqual(dir, top, expected);
}

class RefcountWidthInteropTest : public ::testing::TestWithParam<int> {};

TEST_P(RefcountWidthInteropTest, QemuImageReadsAndTakesOurWrites) {
  SKIP_WITHOUT_QEMU();
  TempDir dir;
  const std::string image = dir.File("r.qcow2");
  MustRun({"qemu-img", "create", "-q", "-f", "qcow2", "-o",
           fmt::format("cluster_size=512,refcount_bits={}", GetParam()), image, "6M"});
  QemuIo(image, {"write -P 0x31 0 1M", "write -P 0x32 3M 512k"});
  std::vector<uint8_t> expected = ReadWithQemu(dir, image);
  ExpectSameDisk(ReadWithForkvmm(image), expected, "before our writes");
  {
    auto disk = OpenImage(image, ImageFormat::kQcow2).value();
    std::vector<uint8_t> patch = RandomBytes(2 << 20, 11);
    ASSERT_TRUE(disk->Write(700000, patch).ok());
    std::memcpy(expected.data() + 700000, patch.data(), patch.size());
  }
  ExpectQemuCheckClean(image);
  ExpectQemuCompareEqual(dir, image, expected);
}

INSTANTIATE_TEST_SUITE_P(Widths, RefcountWidthInteropTest, ::testing::Values(1, 2, 4, 8, 32, 64));

struct OwnLayout {
  const char* cluster;
  const char* compat;
  int refcount_bits;
};

class ForkvmmWrittenImageTest : public ::testing::TestWithParam<OwnLayout> {};

TEST_P(ForkvmmWrittenImageTest, PassesQemuCheckAndCompare) {
  SKIP_WITHOUT_QEMU();
  const OwnLayout layout = GetParam();
  TempDir dir;
  const std::string base = dir.File("base.qcow2");
  const std::string top = dir.File("top.qcow2");
  MustRun({testing::ForkvmmImg(), "img", "create", "-q", "-o",
           fmt::format("cluster_size={},compat={},refcount_bits={}", layout.cluster, layout.compat,
                       layout.refcount_bits),
           base, "12M"});
  MustRun({testing::ForkvmmImg(), "img", "create", "-q", "-b", "base.qcow2", "-F", "qcow2",
           "--cluster-size", layout.cluster, "-o", fmt::format("compat={}", layout.compat), top});
  std::vector<uint8_t> expected(12 << 20, 0);
  uint32_t seed = 1;
  for (const std::string& image : {base, top}) {
    auto disk = OpenImage(image, ImageFormat::kQcow2).value();
    std::mt19937 rng(seed);
    for (int i = 0; i < 60; ++i) {
      uint64_t length = 1 + rng() % 200000;
      uint64_t offset = rng() % (expected.size() - length);
      std::vector<uint8_t> data = RandomBytes(length, seed * 1000 + i);
      ASSERT_TRUE(disk->Write(offset, data).ok());
      std::memcpy(expected.data() + offset, data.data(), length);
      if (i % 10 == 3) {
        ASSERT_TRUE(disk->WriteZeroes(offset, length / 2).ok());
        std::memset(expected.data() + offset, 0, length / 2);
      }
      if (i % 17 == 5) {
        ASSERT_TRUE(disk->Flush().ok());
      }
    }
    ++seed;
  }
  ExpectQemuCheckClean(base);
  ExpectQemuCheckClean(top);
  ExpectQemuCompareEqual(dir, top, expected);
}

INSTANTIATE_TEST_SUITE_P(
    Layouts, ForkvmmWrittenImageTest,
    ::testing::Values(OwnLayout{"512", "1.1", 16}, OwnLayout{"4096", "1.1", 1},
                      OwnLayout{"65536", "1.1", 16}, OwnLayout{"65536", "0.10", 16},
                      OwnLayout{"2M", "1.1", 64}, OwnLayout{"1024", "0.10", 16},
                      OwnLayout{"16384", "1.1", 8}),
    [](const auto& test) {
      return fmt::format("c{}_v{}_r{}", test.param.cluster, test.param.compat[0] == '0' ? 2 : 3,
                         test.param.refcount_bits);
    });

TEST(QemuInteropTest, CommitAndFlattenAgreeWithQemu) {
  SKIP_WITHOUT_QEMU();
  TempDir dir;
  MustRun({"qemu-img", "create", "-q", "-f", "qcow2", dir.File("base.qcow2"), "8M"});
  QemuIo(dir.File("base.qcow2"), {"write -P 0x41 0 8M"});
  MustRun({"qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", "-b",
           "base.qcow2", "-F", "qcow2", dir.File("mid.qcow2")});
  QemuIo(dir.File("mid.qcow2"), {"write -P 0x42 1M 1M", "write -z 3M 64k"});
  MustRun({"qemu-img", "create", "-q", "-f", "qcow2", "-b", "mid.qcow2", "-F", "qcow2",
           dir.File("top.qcow2")});
  QemuIo(dir.File("top.qcow2"), {"write -P 0x43 1536k 100k"});
  std::vector<uint8_t> view = ReadWithQemu(dir, dir.File("top.qcow2"));

  MustRun({testing::ForkvmmImg(), "img", "commit", "-q", dir.File("top.qcow2")});
  ExpectQemuCheckClean(dir.File("mid.qcow2"));
  ExpectQemuCheckClean(dir.File("top.qcow2"));
  ExpectQemuCompareEqual(dir, dir.File("top.qcow2"), view);
  ExpectQemuCompareEqual(dir, dir.File("mid.qcow2"), view);

  MustRun({testing::ForkvmmImg(), "img", "rebase", "-q", "-b", "", dir.File("top.qcow2")});
  testing::ProcessResult info = RunProcess({"qemu-img", "info", "--output=json", dir.File("top.qcow2")});
  EXPECT_FALSE(nlohmann::json::parse(info.out).contains("backing-filename"));
  ExpectQemuCheckClean(dir.File("top.qcow2"));
  ExpectQemuCompareEqual(dir, dir.File("top.qcow2"), view);
}

TEST(QemuInteropTest, RebaseOntoAnotherBackingKeepsContents) {
  SKIP_WITHOUT_QEMU();
  TempDir dir;
  MustRun({"qemu-img", "create", "-q", "-f", "qcow2", dir.File("old.qcow2"), "4M"});
  QemuIo(dir.File("old.qcow2"), {"write -P 0x51 0 2M"});
  MustRun({"qemu-img", "create", "-q", "-f", "raw", dir.File("new.raw"), "4M"});
  QemuIo(dir.File("new.raw"), {"write -P 0x51 0 1M", "write -P 0x52 3M 1M"}, "raw");
  MustRun({"qemu-img", "create", "-q", "-f", "qcow2", "-b", "old.qcow2", "-F", "qcow2",
           dir.File("top.qcow2")});
  QemuIo(dir.File("top.qcow2"), {"write -P 0x53 512k 64k"});
  std::vector<uint8_t> view = ReadWithQemu(dir, dir.File("top.qcow2"));
  MustRun({testing::ForkvmmImg(), "img", "rebase", "-q", "-b", "new.raw", "-F", "raw",
           dir.File("top.qcow2")});
  testing::ProcessResult info = RunProcess({"qemu-img", "info", "--output=json", dir.File("top.qcow2")});
  auto json = nlohmann::json::parse(info.out);
  EXPECT_EQ(json["backing-filename"], "new.raw");
  EXPECT_EQ(json["backing-filename-format"], "raw");
  ExpectQemuCheckClean(dir.File("top.qcow2"));
  ExpectQemuCompareEqual(dir, dir.File("top.qcow2"), view);
}

TEST(QemuInteropTest, InfoJsonMatchesQemuFields) {
  SKIP_WITHOUT_QEMU();
  TempDir dir;
  MustRun({"qemu-img", "create", "-q", "-f", "qcow2", "-o",
           "cluster_size=4096,refcount_bits=8,lazy_refcounts=on,compression_type=zstd",
           dir.File("base.qcow2"), "5G"});
  MustRun({"qemu-img", "create", "-q", "-f", "qcow2", "-o", "compat=0.10", "-b", "base.qcow2",
           "-F", "qcow2", dir.File("top.qcow2")});
  for (const char* name : {"base.qcow2", "top.qcow2"}) {
    auto theirs = nlohmann::json::parse(
        RunProcess({"qemu-img", "info", "--output=json", dir.File(name)}).out);
    testing::ProcessResult ours_run =
        RunProcess({testing::ForkvmmImg(), "img", "info", "--output=json", dir.File(name)});
    ASSERT_EQ(ours_run.exit_code, 0) << ours_run.err;
    auto ours = nlohmann::json::parse(ours_run.out);
    for (const char* key : {"virtual-size", "filename", "cluster-size", "format",
                            "backing-filename", "backing-filename-format", "dirty-flag"}) {
      EXPECT_EQ(ours.value(key, nlohmann::json()), theirs.value(key, nlohmann::json()))
          << name << " " << key;
    }
    for (const char* key : {"compat", "compression-type", "lazy-refcounts", "refcount-bits",
                            "corrupt"}) {
      EXPECT_EQ(ours["format-specific"]["data"].value(key, nlohmann::json()),
                theirs["format-specific"]["data"].value(key, nlohmann::json()))
          << name << " " << key;
    }
  }
}

TEST(QemuInteropTest, CheckExitCodesMatchQemu) {
  SKIP_WITHOUT_QEMU();
  TempDir dir;
  const std::string image = dir.File("a.qcow2");
  MustRun({"qemu-img", "create", "-q", "-f", "qcow2", image, "4M"});
  QemuIo(image, {"write -P 0x61 0 1M"});
  auto expect_both = [&](int code, const char* what) {
    EXPECT_EQ(RunProcess({"qemu-img", "check", image}).exit_code, code) << what << " (qemu-img)";
    EXPECT_EQ(RunProcess({testing::ForkvmmImg(), "img", "check", image}).exit_code, code)
        << what << " (forkvmm)";
  };
  expect_both(0, "clean");

  // Raise the refcount of the last cluster: a leak.
  std::vector<uint8_t> bytes = testing::ReadFileBytes(image);
  auto header = qcow2::ParseHeader(bytes, bytes.size()).value();
  uint64_t block = qcow2::LoadBe64(bytes.data() + header.refcount_table_offset);
  uint64_t last = bytes.size() / header.cluster_size() - 1;
  qcow2::SetRefcountEntry(bytes.data() + block, last, header.refcount_order, 2);
  // qemu-img check also flags the copied flag of that cluster; clear it so
  // only the leak remains.
  for (uint64_t l1 = 0; l1 < header.l1_size; ++l1) {
    uint64_t l2 = qcow2::LoadBe64(bytes.data() + header.l1_table_offset + l1 * 8) &
                  qcow2::kOffsetMask;
    for (uint64_t i = 0; l2 != 0 && i < header.l2_entries(); ++i) {
      uint8_t* entry = bytes.data() + l2 + i * 8;
      if ((qcow2::LoadBe64(entry) & qcow2::kOffsetMask) == last * header.cluster_size()) {
        qcow2::StoreBe64(entry, qcow2::LoadBe64(entry) & ~qcow2::kFlagCopied);
      }
    }
  }
  testing::WriteFileBytes(image, bytes);
  expect_both(3, "leak");
  // Lowering the refcount to 1 makes the cleared copied flag wrong, which
  // both tools count as corruption.
  EXPECT_EQ(RunProcess({testing::ForkvmmImg(), "img", "check", "-q", "-r", "leaks", image}).exit_code,
            2);
  EXPECT_EQ(RunProcess({"qemu-img", "check", image}).exit_code, 2) << "copied flag now wrong";
  MustRun({testing::ForkvmmImg(), "img", "check", "-q", "-r", "all", image});
  expect_both(0, "after repair");

  // A referenced cluster with refcount 0: corruption.
  bytes = testing::ReadFileBytes(image);
  qcow2::SetRefcountEntry(bytes.data() + block, last, header.refcount_order, 0);
  testing::WriteFileBytes(image, bytes);
  expect_both(2, "corruption");
  MustRun({testing::ForkvmmImg(), "img", "check", "-q", "-r", "all", image});
  expect_both(0, "after repairing the corruption");
}


// Runs `img check` (with `extra` arguments) and `qemu-img check` on `image`.
struct CheckResults {
  testing::ProcessResult forkvmm;
  int qemu_exit = -1;
};

CheckResults CheckWithBoth(const std::string& image, const std::vector<std::string>& extra = {}) {
  std::vector<std::string> argv = {testing::ForkvmmImg(), "img", "check"};
  argv.insert(argv.end(), extra.begin(), extra.end());
  argv.push_back(image);
  CheckResults results;
  results.forkvmm = RunProcess(argv);
  results.qemu_exit = RunProcess({"qemu-img", "check", image}).exit_code;
  return results;
}

// A 64 MiB image written by qemu-io: its L1 table is at 0x30000 and its one
// L2 table maps 17 data clusters.
std::string MakeQemuImageWithData(const TempDir& dir, const std::string& name) {
  const std::string image = dir.File(name);
  MustRun({"qemu-img", "create", "-q", "-f", "qcow2", image, "64M"});
  QemuIo(image, {"write -P 0x61 0 1M", "write -P 0x62 32M 64k"});
  return image;
}

void PatchBe64(const std::string& image, uint64_t offset, uint64_t value) {
  std::vector<uint8_t> bytes = testing::ReadFileBytes(image);
  ASSERT_LE(offset + 8, bytes.size());
  qcow2::StoreBe64(bytes.data() + offset, value);
  testing::WriteFileBytes(image, bytes);
}

TEST(QemuInteropTest, CheckCountsInvalidL1EntriesAsCorruption) {
  SKIP_WITHOUT_QEMU();
  struct Case {
    uint64_t entry;
    std::string message;
    bool repairable;
  };
  const Case cases[] = {
      {0x8000000000000000,
       "ERROR L1 table entry 0 (0x8000000000000000) has flags or reserved bits set but no L2 "
       "table offset",
       true},
      {0x0000000000000100,
       "ERROR L1 table entry 0 (0x100) has flags or reserved bits set but no L2 table offset",
       true},
      {0x8100000000040000, "ERROR L1 table entry 0 (0x8100000000040000) has reserved bits set",
       false},
      {0x8000000000048000,
       "ERROR L1 table entry 0 (0x8000000000048000): L2 table offset 0x48000 is not "
       "cluster-aligned",
       false},
      {0x8000000010000000,
       "ERROR L1 table entry 0 (0x8000000010000000): L2 table offset 0x10000000 is past the end "
       "of the file (size 0x160000)",
       false},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.message);
    TempDir dir;
    const std::string image = MakeQemuImageWithData(dir, "a.qcow2");
    PatchBe64(image, 0x30000, c.entry);
    const std::string hash = testing::HashFile(image);
    CheckResults before = CheckWithBoth(image);
    EXPECT_EQ(before.qemu_exit, 2);
    EXPECT_EQ(before.forkvmm.exit_code, 2) << before.forkvmm.out << before.forkvmm.err;
    EXPECT_EQ(testing::Lines(before.forkvmm.out).at(0), c.message);
    EXPECT_EQ(testing::HashFile(image), hash) << "check without -r changed the file";

    CheckResults repaired = CheckWithBoth(image, {"-r", "all"});
    if (c.repairable) {
      EXPECT_EQ(repaired.forkvmm.exit_code, 0) << repaired.forkvmm.out;
      EXPECT_EQ(repaired.qemu_exit, 0);
    } else {
      // Not repaired, so neither tool may call the image clean.
      EXPECT_EQ(repaired.forkvmm.exit_code, 2) << repaired.forkvmm.out;
      EXPECT_EQ(repaired.qemu_exit, 2);
    }
  }
}

TEST(QemuInteropTest, CheckReservedL1EntryKeepsItsClusters) {
  SKIP_WITHOUT_QEMU();
  TempDir dir;
  const std::string image = MakeQemuImageWithData(dir, "a.qcow2");
  PatchBe64(image, 0x30000, 0x8100000000040000);
  // A leak repair must not free the L2 table or the data it maps, because
  // QEMU ignores the reserved bits and still reads through that entry.
  MustRun({"qemu-img", "convert", "-O", "raw", image, dir.File("before.raw")});
  EXPECT_EQ(RunProcess({testing::ForkvmmImg(), "img", "check", "-q", "-r", "leaks", image})
                .exit_code,
            2);
  MustRun({"qemu-img", "convert", "-O", "raw", image, dir.File("after.raw")});
  EXPECT_TRUE(testing::ReadFileBytes(dir.File("before.raw")) ==
              testing::ReadFileBytes(dir.File("after.raw")))
      << "the leak repair changed the data QEMU reads";
}

TEST(QemuInteropTest, CheckCountsTablesPastTheEndAsCorruption) {
  SKIP_WITHOUT_QEMU();
  TempDir dir;
  const std::string l1 = MakeQemuImageWithData(dir, "l1.qcow2");
  PatchBe64(l1, 40, 0x10000000);  // l1_table_offset
  CheckResults l1_before = CheckWithBoth(l1);
  EXPECT_EQ(l1_before.qemu_exit, 2);
  EXPECT_EQ(l1_before.forkvmm.exit_code, 2) << l1_before.forkvmm.out << l1_before.forkvmm.err;
  EXPECT_EQ(testing::Lines(l1_before.forkvmm.out).at(0),
            "ERROR L1 table at offset 0x10000000 (8 bytes) extends past the end of the file "
            "(size 0x160000)");
  // The mapping is lost, so the repair cannot make the image clean.
  CheckResults l1_repaired = CheckWithBoth(l1, {"-r", "all"});
  EXPECT_EQ(l1_repaired.forkvmm.exit_code, 2) << l1_repaired.forkvmm.out;
  EXPECT_EQ(l1_repaired.qemu_exit, 2);

  const std::string refcounts = MakeQemuImageWithData(dir, "refcounts.qcow2");
  const std::vector<uint8_t> data = ReadWithQemu(dir, refcounts);
  PatchBe64(refcounts, 48, 0x10000000);  // refcount_table_offset
  CheckResults refcounts_before = CheckWithBoth(refcounts);
  EXPECT_EQ(refcounts_before.qemu_exit, 2);
  EXPECT_EQ(refcounts_before.forkvmm.exit_code, 2) << refcounts_before.forkvmm.err;
  EXPECT_EQ(testing::Lines(refcounts_before.forkvmm.out).at(0),
            "ERROR refcount table at offset 0x10000000 (65536 bytes) extends past the end of the "
            "file (size 0x160000)");
  // The refcounts can be rebuilt from the tables, which are intact.
  CheckResults refcounts_repaired = CheckWithBoth(refcounts, {"-r", "all"});
  EXPECT_EQ(refcounts_repaired.forkvmm.exit_code, 0) << refcounts_repaired.forkvmm.out;
  EXPECT_EQ(refcounts_repaired.qemu_exit, 0);
  ExpectSameDisk(ReadWithForkvmm(refcounts), data, "after rebuilding the refcounts");
}

TEST(QemuInteropTest, CreateRejectsItsOwnBackingFile) {
  SKIP_WITHOUT_QEMU();
  TempDir dir;
  const std::string top = dir.File("top.qcow2");
  MustRun({"qemu-img", "create", "-q", "-f", "qcow2", top, "1M"});
  QemuIo(top, {"write -P 0x61 0 64k"});
  const std::string hash = testing::HashFile(top);

  // qemu-img 7.2 compares the two names as strings, so only identical
  // names show its error.
  testing::ProcessResult qemu =
      RunProcess({"qemu-img", "create", "-f", "qcow2", "-b", top, "-F", "qcow2", top});
  EXPECT_EQ(qemu.exit_code, 1) << qemu.out;
  EXPECT_NE(qemu.err.find("same filename as the backing file"), std::string::npos) << qemu.err;
  ASSERT_EQ(testing::HashFile(top), hash) << "qemu-img changed the image";

  ASSERT_EQ(symlink("top.qcow2", dir.File("link.qcow2").c_str()), 0);
  ASSERT_EQ(link(top.c_str(), dir.File("hard.qcow2").c_str()), 0);
  MustRun({testing::ForkvmmImg(), "img", "create", "-q", "-b", "top.qcow2", "-F", "qcow2",
           dir.File("mid.qcow2")});
  struct Case {
    std::string backing;
    std::string reason;
  };
  const Case cases[] = {
      {"top.qcow2", "the backing file 'top.qcow2' is the image being created"},
      {"./top.qcow2", "the backing file './top.qcow2' is the image being created"},
      {dir.File("top.qcow2"), "the backing file '" + top + "' is the image being created"},
      {"link.qcow2", "the backing file 'link.qcow2' is the image being created"},
      {"hard.qcow2", "the backing file 'hard.qcow2' is the image being created"},
      {"mid.qcow2", "the backing chain of 'mid.qcow2' contains the image being created (as " +
                        top + ")"},
  };
  for (const Case& c : cases) {
    testing::ProcessResult created = RunProcess(
        {testing::ForkvmmImg(), "img", "create", "-b", c.backing, "-F", "qcow2", top});
    EXPECT_EQ(created.exit_code, 1) << c.backing;
    EXPECT_EQ(created.out, "") << c.backing;
    EXPECT_EQ(created.err, "forkvmm: " + top + ": " + c.reason + "\n");
    EXPECT_EQ(testing::HashFile(top), hash) << c.backing << ": forkvmm changed the image";
  }
  // The image does not exist yet: the names alone show the loop.
  const std::string fresh = dir.File("fresh.qcow2");
  testing::ProcessResult created = RunProcess(
      {testing::ForkvmmImg(), "img", "create", "-b", "fresh.qcow2", "-F", "qcow2", fresh});
  EXPECT_EQ(created.exit_code, 1);
  EXPECT_EQ(created.err,
            "forkvmm: " + fresh + ": the backing file 'fresh.qcow2' is the image being created\n");
  EXPECT_NE(access(fresh.c_str(), F_OK), 0) << "forkvmm created the image";
  ExpectQemuCheckClean(top);
}

}  // namespace
}  // namespace forkvmm::block
