// Image locks on temporary files. Two opens in one process conflict like two
// processes, because OFD locks belong to the open file description.
#include "devices/block/image_lock.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <memory>

#include "devices/block/image.h"
#include "devices/block/image_file.h"
#include "devices/block/test_support.h"

namespace forkvmm::block {
namespace {

using testing::HashFile;
using testing::RandomBytes;
using testing::TempDir;

std::string OpenError(const std::string& path, bool writable, bool force_share = false) {
  auto opened = ImageFile::Open(path, writable, force_share);
  return opened.ok() ? "opened" : opened.error().message();
}

std::string InUse(const std::string& path, const std::string& lock) {
  return path + ": failed to get " + lock +
         " lock: the image is in use by another process (forkvmm or QEMU)";
}

// Returns the permissions that other opens of `path` use and do not share.
ImagePermissions OthersOf(const std::string& path) {
  auto probe = ImageFile::Open(path, /*writable=*/false, /*force_share=*/true);
  EXPECT_TRUE(probe.ok()) << probe.error().message();
  if (!probe.ok()) return {};
  auto others = ProbeOtherLocks(probe->fd(), path);
  EXPECT_TRUE(others.ok()) << others.error().message();
  return others.ok() ? *others : ImagePermissions{};
}

class ImageLockTest : public ::testing::Test {
 protected:
  void SetUp() override { testing::WriteFileBytes(path_, RandomBytes(4096, 1)); }

  TempDir dir_;
  std::string path_ = dir_.File("disk.img");
};

TEST_F(ImageLockTest, WritableOpenTakesQemuBytes) {
  auto file = ImageFile::Open(path_, /*writable=*/true);
  ASSERT_TRUE(file.ok()) << file.error().message();

  ImagePermissions others = OthersOf(path_);
  EXPECT_EQ(others.used, kPermConsistentRead | kPermWrite | kPermResize);
  EXPECT_EQ(others.shared, kPermConsistentRead | kPermWriteUnchanged);
}

TEST_F(ImageLockTest, ReadOnlyOpenRefusesWriteAndResize) {
  auto file = ImageFile::Open(path_, /*writable=*/false);
  ASSERT_TRUE(file.ok()) << file.error().message();

  ImagePermissions others = OthersOf(path_);
  EXPECT_EQ(others.used, kPermConsistentRead);
  EXPECT_EQ(others.shared, kPermConsistentRead | kPermWriteUnchanged);
}

TEST_F(ImageLockTest, SecondWriterFails) {
  auto first = ImageFile::Open(path_, /*writable=*/true);
  ASSERT_TRUE(first.ok()) << first.error().message();

  auto second = ImageFile::Open(path_, /*writable=*/true);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.error().errnum(), EAGAIN);
  EXPECT_EQ(second.error().message(), InUse(path_, "\"write\""));
}

TEST_F(ImageLockTest, ReaderFailsWhileWriterHoldsImage) {
  auto writer = ImageFile::Open(path_, /*writable=*/true);
  ASSERT_TRUE(writer.ok()) << writer.error().message();

  EXPECT_EQ(OpenError(path_, /*writable=*/false), InUse(path_, "shared \"write\""));
  EXPECT_EQ(OpenError(path_, /*writable=*/false, /*force_share=*/true), "opened");
}

TEST_F(ImageLockTest, WriterFailsWhileReaderHoldsImage) {
  auto reader = ImageFile::Open(path_, /*writable=*/false);
  ASSERT_TRUE(reader.ok()) << reader.error().message();

  EXPECT_EQ(OpenError(path_, /*writable=*/true), InUse(path_, "\"write\""));
}

TEST_F(ImageLockTest, ReadersShareImage) {
  auto first = ImageFile::Open(path_, /*writable=*/false);
  auto second = ImageFile::Open(path_, /*writable=*/false);
  EXPECT_TRUE(first.ok()) << first.error().message();
  EXPECT_TRUE(second.ok()) << second.error().message();
}

TEST_F(ImageLockTest, ForceShareReaderDoesNotBlockWriter) {
  auto reader = ImageFile::Open(path_, /*writable=*/false, /*force_share=*/true);
  ASSERT_TRUE(reader.ok()) << reader.error().message();

  EXPECT_EQ(OpenError(path_, /*writable=*/true), "opened");
}

TEST_F(ImageLockTest, ForceShareWritableOpenIsInvalid) {
  auto opened = ImageFile::Open(path_, /*writable=*/true, /*force_share=*/true);
  ASSERT_FALSE(opened.ok());
  EXPECT_EQ(opened.error().errnum(), EINVAL);
}

TEST_F(ImageLockTest, CloseReleasesLocks) {
  {
    auto writer = ImageFile::Open(path_, /*writable=*/true);
    ASSERT_TRUE(writer.ok()) << writer.error().message();
  }
  EXPECT_EQ(OpenError(path_, /*writable=*/true), "opened");
}

TEST_F(ImageLockTest, CreateOverLockedImageChangesNothing) {
  auto reader = ImageFile::Open(path_, /*writable=*/false);
  ASSERT_TRUE(reader.ok()) << reader.error().message();
  std::string before = HashFile(path_);

  auto created = ImageFile::Create(path_, ImageFile::CreateMode::kTruncate);
  ASSERT_FALSE(created.ok());
  EXPECT_EQ(created.error().message(), InUse(path_, "\"write\""));
  EXPECT_EQ(HashFile(path_), before);
}

TEST_F(ImageLockTest, ReopenReadOnlyKeepsReadersAndRefusesWriters) {
  auto file = ImageFile::Open(path_, /*writable=*/true);
  ASSERT_TRUE(file.ok()) << file.error().message();

  auto reopened = file->ReopenReadOnly();
  ASSERT_TRUE(reopened.ok()) << reopened.error().message();
  *file = std::move(reopened).value();

  EXPECT_FALSE(file->writable());
  ImagePermissions others = OthersOf(path_);
  EXPECT_EQ(others.used, kPermConsistentRead);
  EXPECT_EQ(others.shared, kPermConsistentRead | kPermWriteUnchanged);
  EXPECT_EQ(OpenError(path_, /*writable=*/false), "opened");
  EXPECT_EQ(OpenError(path_, /*writable=*/true), InUse(path_, "\"write\""));
}

// A fork child closes the fds it inherits (the VM process does) and opens
// its own. The parent's locks must survive that, and the child's own locks
// must go when it is killed.
TEST_F(ImageLockTest, ForkChildLocksFollowTheirOwner) {
  const std::string overlay = dir_.File("child.img");
  testing::WriteFileBytes(overlay, RandomBytes(4096, 2));
  auto frozen = ImageFile::Open(path_, /*writable=*/false);
  ASSERT_TRUE(frozen.ok()) << frozen.error().message();

  int ready[2];
  ASSERT_EQ(pipe(ready), 0);
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    close(ready[0]);
    *frozen = ImageFile();  // closes the inherited fd
    auto shared = ImageFile::Open(path_, /*writable=*/false);
    auto own = ImageFile::Open(overlay, /*writable=*/true);
    char status = shared.ok() && own.ok() ? 'y' : 'n';
    if (write(ready[1], &status, 1) != 1) _exit(2);
    pause();
    _exit(0);
  }
  close(ready[1]);
  char status = 0;
  ASSERT_EQ(read(ready[0], &status, 1), 1);
  close(ready[0]);
  EXPECT_EQ(status, 'y');

  EXPECT_EQ(OpenError(path_, /*writable=*/true), InUse(path_, "\"write\""));
  EXPECT_EQ(OpenError(overlay, /*writable=*/false), InUse(overlay, "shared \"write\""));

  ASSERT_EQ(kill(pid, SIGKILL), 0);
  int wait_status = 0;
  ASSERT_EQ(waitpid(pid, &wait_status, 0), pid);
  EXPECT_EQ(OpenError(overlay, /*writable=*/true), "opened");
  // The parent still holds the frozen layer.
  EXPECT_EQ(OpenError(path_, /*writable=*/true), InUse(path_, "\"write\""));
  *frozen = ImageFile();
  EXPECT_EQ(OpenError(path_, /*writable=*/true), "opened");
}

// A VM creates its fork overlays while its top layer is still writable.
TEST(ImageChainLockTest, OverlayOfLayerOpenForWriting) {
  TempDir dir;
  const std::string base = dir.File("base.qcow2");
  ASSERT_TRUE(CreateImage(base, {.size = 1 << 20}).ok());
  auto top = OpenImage(base, ImageFormat::kQcow2);
  ASSERT_TRUE(top.ok()) << top.error().message();

  Status created = CreateOverlay(dir.File("over.qcow2"), "base.qcow2", ImageFormat::kQcow2);
  EXPECT_TRUE(created.ok()) << created.error().message();
}

TEST(ImageChainLockTest, ForkedLayersLockedByTheirOwners) {
  TempDir dir;
  const std::string base = dir.File("base.qcow2");
  ASSERT_TRUE(CreateImage(base, {.size = 1 << 20}).ok());
  auto top = OpenImage(base, ImageFormat::kQcow2);
  ASSERT_TRUE(top.ok()) << top.error().message();

  const std::string parent = dir.File("parent.qcow2");
  const std::string child = dir.File("child.qcow2");
  Status branched = FreezeAndBranch(**top, parent, child);
  ASSERT_TRUE(branched.ok()) << branched.error().message();
  auto parent_disk = OpenOverlayOn(parent, std::move(top).value());
  ASSERT_TRUE(parent_disk.ok()) << parent_disk.error().message();
  auto child_disk = OpenImage(child, ImageFormat::kQcow2);
  ASSERT_TRUE(child_disk.ok()) << child_disk.error().message();

  auto frozen_writer = OpenImage(base, ImageFormat::kQcow2);
  ASSERT_FALSE(frozen_writer.ok());
  EXPECT_EQ(frozen_writer.error().message(), InUse(base, "\"write\""));
  auto frozen_reader = OpenImage(base, ImageFormat::kQcow2, {.read_only = true});
  EXPECT_TRUE(frozen_reader.ok()) << frozen_reader.error().message();
  for (const std::string& overlay : {parent, child}) {
    auto second = OpenImage(overlay, ImageFormat::kQcow2, {.read_only = true});
    ASSERT_FALSE(second.ok()) << overlay;
    EXPECT_EQ(second.error().message(), InUse(overlay, "shared \"write\""));
    auto shared = OpenImage(overlay, ImageFormat::kQcow2, {.read_only = true, .force_share = true});
    EXPECT_TRUE(shared.ok()) << shared.error().message();
  }
}

}  // namespace
}  // namespace forkvmm::block
