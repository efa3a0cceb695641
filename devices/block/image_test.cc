// Backing chains, format rules and the fork helpers.
#include "devices/block/image.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cstring>

#include "devices/block/qcow2.h"
#include "devices/block/qcow2_check.h"
#include "devices/block/qcow2_create.h"
#include "devices/block/test_support.h"

namespace forkvmm::block {
namespace {

using testing::HashFile;
using testing::RandomBytes;
using testing::TempDir;

std::string OpenError(const std::string& path, ImageFormat format, OpenOptions options = {}) {
  auto opened = OpenImage(path, format, options);
  return opened.ok() ? "opened" : opened.error().message();
}

void MakeOverlay(const std::string& path, const std::string& backing, ImageFormat format,
                 uint64_t cluster_size = 65536) {
  Status created = CreateImage(path, {.cluster_size = cluster_size, .backing_file = backing,
                                      .backing_format = format});
  ASSERT_TRUE(created.ok()) << created.error().message();
}

TEST(ImageChainTest, FourLayersResolveRelativeToEachImage) {
  TempDir dir;
  ASSERT_EQ(mkdir(dir.File("a").c_str(), 0755), 0);
  ASSERT_EQ(mkdir(dir.File("a/b").c_str(), 0755), 0);
  const uint64_t size = 1 << 20;
  std::vector<uint8_t> expected = RandomBytes(size, 1);
  testing::WriteFileBytes(dir.File("base.raw"), expected);
  // a/l1.qcow2 -> ../base.raw, a/b/l2.qcow2 -> ../l1.qcow2, top.qcow2 -> a/b/l2.qcow2
  MakeOverlay(dir.File("a/l1.qcow2"), "../base.raw", ImageFormat::kRaw, 512);
  MakeOverlay(dir.File("a/b/l2.qcow2"), "../l1.qcow2", ImageFormat::kQcow2, 4096);
  MakeOverlay(dir.File("top.qcow2"), "a/b/l2.qcow2", ImageFormat::kQcow2, 1 << 21);
  uint32_t seed = 10;
  for (const char* layer : {"a/l1.qcow2", "a/b/l2.qcow2", "top.qcow2"}) {
    auto disk = OpenImage(dir.File(layer), ImageFormat::kQcow2).value();
    std::vector<uint8_t> patch = RandomBytes(3000, seed);
    uint64_t offset = seed * 40000;
    ASSERT_TRUE(disk->Write(offset, patch).ok());
    std::memcpy(expected.data() + offset, patch.data(), patch.size());
    ++seed;
  }
  auto top = OpenImage(dir.File("top.qcow2"), ImageFormat::kQcow2, {.read_only = true}).value();
  int depth = 0;
  for (BlockBackend* layer = top.get(); layer != nullptr; layer = layer->backing()) ++depth;
  EXPECT_EQ(depth, 4);
  std::vector<uint8_t> out(size);
  ASSERT_TRUE(top->Read(0, out).ok());
  EXPECT_EQ(out, expected);
}

TEST(ImageChainTest, LoopIsRejected) {
  TempDir dir;
  ASSERT_TRUE(CreateImage(dir.File("a.qcow2"), {.size = 1 << 20}).ok());
  MakeOverlay(dir.File("b.qcow2"), "a.qcow2", ImageFormat::kQcow2);
  // Point a.qcow2 at b.qcow2 behind the creator's back.
  {
    auto file = ImageFile::Open(dir.File("a.qcow2"), true).value();
    ASSERT_TRUE(qcow2::SetBackingFile(file, "b.qcow2", "qcow2").ok());
  }
  std::string hash = HashFile(dir.File("b.qcow2"));
  EXPECT_EQ(OpenError(dir.File("b.qcow2"), ImageFormat::kQcow2),
            dir.File("a.qcow2") +
                ": backing file 'b.qcow2' is already in the backing chain, which would make a loop");
  EXPECT_EQ(HashFile(dir.File("b.qcow2")), hash);
}

TEST(ImageChainTest, SelfReferenceIsRejected) {
  TempDir dir;
  ASSERT_TRUE(CreateImage(dir.File("a.qcow2"), {.size = 1 << 20}).ok());
  {
    auto file = ImageFile::Open(dir.File("a.qcow2"), true).value();
    ASSERT_TRUE(qcow2::SetBackingFile(file, "a.qcow2", "qcow2").ok());
  }
  EXPECT_EQ(OpenError(dir.File("a.qcow2"), ImageFormat::kQcow2),
            dir.File("a.qcow2") +
                ": backing file 'a.qcow2' is already in the backing chain, which would make a loop");
}

TEST(ImageChainTest, MissingBackingFileIsRejected) {
  TempDir dir;
  ASSERT_TRUE(CreateImage(dir.File("base.qcow2"), {.size = 1 << 20}).ok());
  MakeOverlay(dir.File("top.qcow2"), "base.qcow2", ImageFormat::kQcow2);
  ASSERT_EQ(unlink(dir.File("base.qcow2").c_str()), 0);
  EXPECT_EQ(OpenError(dir.File("top.qcow2"), ImageFormat::kQcow2),
            dir.File("top.qcow2") + ": cannot open backing file 'base.qcow2' (resolved to '" +
                dir.File("base.qcow2") + "'): No such file or directory");
}

TEST(ImageChainTest, BackingWithoutFormatIsRejected) {
  TempDir dir;
  ASSERT_TRUE(CreateImage(dir.File("base.raw"), {.format = ImageFormat::kRaw, .size = 4096}).ok());
  ASSERT_TRUE(CreateImage(dir.File("top.qcow2"), {.size = 4096}).ok());
  {
    auto file = ImageFile::Open(dir.File("top.qcow2"), true).value();
    ASSERT_TRUE(qcow2::SetBackingFile(file, "base.raw", "").ok());
  }
  EXPECT_EQ(OpenError(dir.File("top.qcow2"), ImageFormat::kQcow2),
            dir.File("top.qcow2") +
                ": backing file 'base.raw' has no recorded format, and forkvmm does not guess "
                "formats; record it with 'forkvmm img rebase -u -b base.raw -F raw|qcow2 " +
                dir.File("top.qcow2") + "'");
}

TEST(ImageChainTest, OpenWithoutBackingReadsZeros) {
  TempDir dir;
  testing::WriteFileBytes(dir.File("base.raw"), std::vector<uint8_t>(65536, 0x77));
  MakeOverlay(dir.File("top.qcow2"), "base.raw", ImageFormat::kRaw);
  auto top = OpenImage(dir.File("top.qcow2"), ImageFormat::kQcow2, {.open_backing = false});
  ASSERT_TRUE(top.ok()) << top.error().message();
  EXPECT_TRUE((*top)->read_only());
  EXPECT_EQ((*top)->backing(), nullptr);
  std::vector<uint8_t> out(512, 1);
  ASSERT_TRUE((*top)->Read(0, out).ok());
  EXPECT_EQ(std::count(out.begin(), out.end(), 0), 512);
}

TEST(ImageChainTest, ProbeFindsQcow2Magic) {
  TempDir dir;
  ASSERT_TRUE(CreateImage(dir.File("a.qcow2"), {.size = 4096}).ok());
  ASSERT_TRUE(CreateImage(dir.File("a.raw"), {.format = ImageFormat::kRaw, .size = 4096}).ok());
  EXPECT_EQ(ProbeImageFormat(dir.File("a.qcow2")).value(), ImageFormat::kQcow2);
  EXPECT_EQ(ProbeImageFormat(dir.File("a.raw")).value(), ImageFormat::kRaw);
}

TEST(ImageChainTest, CreateRejectsBackingWithoutFormat) {
  TempDir dir;
  ASSERT_TRUE(CreateImage(dir.File("base.qcow2"), {.size = 4096}).ok());
  Status created = CreateImage(dir.File("top.qcow2"), {.backing_file = "base.qcow2"});
  ASSERT_FALSE(created.ok());
  EXPECT_EQ(created.error().message(),
            dir.File("top.qcow2") +
                ": a backing file needs its format (raw or qcow2); forkvmm records it and never "
                "guesses it");
}

TEST(ForkHelpersTest, FreezeAndBranchGivesIndependentOverlays) {
  TempDir dir;
  const uint64_t size = 1 << 20;
  ASSERT_TRUE(CreateImage(dir.File("disk.qcow2"), {.size = size}).ok());
  std::vector<uint8_t> shared = RandomBytes(size, 5);
  std::unique_ptr<BlockBackend> top = OpenImage(dir.File("disk.qcow2"), ImageFormat::kQcow2).value();
  ASSERT_TRUE(top->Write(0, shared).ok());

  Status branched = FreezeAndBranch(*top, dir.File("parent.qcow2"), dir.File("child.qcow2"));
  ASSERT_TRUE(branched.ok()) << branched.error().message();
  EXPECT_TRUE(top->read_only());
  EXPECT_FALSE(top->Write(0, shared).ok());
  const std::string frozen_hash = HashFile(dir.File("disk.qcow2"));

  // The overlays record the frozen layer relative to their own directory.
  auto parent_header = OpenImage(dir.File("parent.qcow2"), ImageFormat::kQcow2,
                                 {.open_backing = false})
                           .value();
  EXPECT_EQ(static_cast<Qcow2Backend&>(*parent_header).header().backing_file,
            dir.File("disk.qcow2"));
  parent_header.reset();  // its read lock would reject the writable open below

  // In one process the child opens its own copy of the chain; the parent
  // stacks its overlay on the frozen layer it already has open.
  auto child = OpenImage(dir.File("child.qcow2"), ImageFormat::kQcow2).value();
  auto parent = OpenOverlayOn(dir.File("parent.qcow2"), std::move(top));
  ASSERT_TRUE(parent.ok()) << parent.error().message();
  ASSERT_TRUE((*parent)->Write(100, std::vector<uint8_t>(10, 0xaa)).ok());
  ASSERT_TRUE(child->Write(100, std::vector<uint8_t>(10, 0xbb)).ok());
  std::vector<uint8_t> parent_view(size);
  std::vector<uint8_t> child_view(size);
  ASSERT_TRUE((*parent)->Read(0, parent_view).ok());
  ASSERT_TRUE(child->Read(0, child_view).ok());
  std::vector<uint8_t> expected_parent = shared;
  std::vector<uint8_t> expected_child = shared;
  std::memset(expected_parent.data() + 100, 0xaa, 10);
  std::memset(expected_child.data() + 100, 0xbb, 10);
  EXPECT_EQ(parent_view, expected_parent);
  EXPECT_EQ(child_view, expected_child);
  parent->reset();
  child.reset();
  EXPECT_EQ(HashFile(dir.File("disk.qcow2")), frozen_hash);
  for (const char* name : {"disk.qcow2", "parent.qcow2", "child.qcow2"}) {
    auto report = qcow2::CheckImage(dir.File(name), qcow2::RepairMode::kNone).value();
    EXPECT_EQ(report.corruptions + report.leaks, 0u) << name;
  }
}

TEST(ForkHelpersTest, RelativeLayerGivesRelativeBackingPath) {
  TempDir dir;
  ASSERT_EQ(mkdir(dir.File("forks").c_str(), 0755), 0);
  ASSERT_EQ(chdir(dir.path().c_str()), 0);
  ASSERT_TRUE(CreateImage("disk.qcow2", {.size = 1 << 20}).ok());
  auto top = OpenImage("disk.qcow2", ImageFormat::kQcow2).value();
  Status branched = FreezeAndBranch(*top, "forks/p.qcow2", "forks/c.qcow2");
  ASSERT_TRUE(branched.ok()) << branched.error().message();
  auto overlay = OpenImage("forks/c.qcow2", ImageFormat::kQcow2, {.open_backing = false}).value();
  EXPECT_EQ(static_cast<Qcow2Backend&>(*overlay).header().backing_file, "../disk.qcow2");
  EXPECT_EQ(static_cast<Qcow2Backend&>(*overlay).header().backing_format, "qcow2");
  overlay.reset();  // its read lock would reject the writable open below
  EXPECT_TRUE(OpenImage("forks/c.qcow2", ImageFormat::kQcow2).ok());
  ASSERT_EQ(chdir("/"), 0);
}

TEST(ForkHelpersTest, FailedBranchLeavesLayerWritable) {
  TempDir dir;
  ASSERT_TRUE(CreateImage(dir.File("disk.qcow2"), {.size = 1 << 20}).ok());
  auto top = OpenImage(dir.File("disk.qcow2"), ImageFormat::kQcow2).value();
  testing::WriteFileBytes(dir.File("child.qcow2"), {1, 2, 3});  // exists already
  Status branched = FreezeAndBranch(*top, dir.File("parent.qcow2"), dir.File("child.qcow2"));
  ASSERT_FALSE(branched.ok());
  EXPECT_EQ(branched.error().message(),
            dir.File("child.qcow2") + ": cannot create: File exists");
  EXPECT_FALSE(top->read_only());
  EXPECT_TRUE(top->Write(0, std::vector<uint8_t>(512, 1)).ok());
  struct stat st {};
  EXPECT_NE(stat(dir.File("parent.qcow2").c_str(), &st), 0);
}

TEST(ForkHelpersTest, OverlayOnWrongLayerIsRejected) {
  TempDir dir;
  ASSERT_TRUE(CreateImage(dir.File("a.qcow2"), {.size = 1 << 20}).ok());
  ASSERT_TRUE(CreateImage(dir.File("b.qcow2"), {.size = 1 << 20}).ok());
  ASSERT_TRUE(CreateOverlay(dir.File("over.qcow2"), "a.qcow2", ImageFormat::kQcow2).ok());
  auto b = OpenImage(dir.File("b.qcow2"), ImageFormat::kQcow2, {.read_only = true}).value();
  auto stacked = OpenOverlayOn(dir.File("over.qcow2"), std::move(b));
  ASSERT_FALSE(stacked.ok());
  EXPECT_EQ(stacked.error().message(), dir.File("over.qcow2") +
                                           ": backing file 'a.qcow2' is not the open layer " +
                                           dir.File("b.qcow2"));
}

}  // namespace
}  // namespace forkvmm::block
