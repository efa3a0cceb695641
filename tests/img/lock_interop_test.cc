// Image locks between forkvmm and QEMU 7.2's tools: each must see the other's
// OFD lock bytes and refuse a conflicting open with a clear error.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "devices/block/image.h"
#include "devices/block/image_file.h"
#include "devices/block/image_lock.h"
#include "devices/block/test_support.h"
#include "tests/img/img_test_util.h"

namespace forkvmm::block {
namespace {

using testing::HashFile;
using testing::RunProcess;
using testing::TempDir;

std::string InUse(const std::string& path, const std::string& lock) {
  return path + ": failed to get " + lock +
         " lock: the image is in use by another process (forkvmm or QEMU)";
}

void MustRun(const std::vector<std::string>& argv) {
  testing::ProcessResult result = RunProcess(argv);
  ASSERT_EQ(result.exit_code, 0) << argv[0] << ": " << result.err << result.out;
}

bool InPath(const std::string& name) {
  return RunProcess({"sh", "-c", "command -v " + name}).exit_code == 0;
}

// A process started in the background and killed by its pid when the
// object goes, so a failing test leaves no holder behind.
class BackgroundProcess {
 public:
  explicit BackgroundProcess(const std::vector<std::string>& argv) {
    pid_ = fork();
    if (pid_ != 0) return;
    int null_fd = open("/dev/null", O_RDWR);
    dup2(null_fd, STDIN_FILENO);
    dup2(null_fd, STDOUT_FILENO);
    dup2(null_fd, STDERR_FILENO);
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execvp(args[0], args.data());
    _exit(127);
  }
  ~BackgroundProcess() { Kill(); }
  BackgroundProcess(const BackgroundProcess&) = delete;
  BackgroundProcess& operator=(const BackgroundProcess&) = delete;

  void Kill() {
    if (pid_ <= 0) return;
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }

 private:
  pid_t pid_ = -1;
};

// Waits up to 20 s until another open of `path` uses `permission`.
bool WaitForLock(const std::string& path, uint32_t permission) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (std::chrono::steady_clock::now() < deadline) {
    auto probe = ImageFile::Open(path, /*writable=*/false, /*force_share=*/true);
    if (probe.ok()) {
      auto others = ProbeOtherLocks(probe->fd(), path);
      if (others.ok() && (others->used & permission) != 0) return true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return false;
}

// Runs forkvmm-img and expects it to fail with exactly `message` on stderr,
// leaving `image` unchanged.
void ExpectImgFails(const std::vector<std::string>& args, const std::string& image,
                    const std::string& message) {
  std::string before = HashFile(image);
  std::vector<std::string> argv = {testing::ForkvmmImg(), "img"};
  argv.insert(argv.end(), args.begin(), args.end());
  testing::ProcessResult result = RunProcess(argv);
  EXPECT_NE(result.exit_code, 0) << args[0];
  EXPECT_EQ(testing::Lines(result.err), std::vector<std::string>{"forkvmm: " + message})
      << args[0];
  EXPECT_EQ(HashFile(image), before) << args[0];
}

class LockInteropTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!testing::HaveQemu()) {
      GTEST_SKIP() << "qemu-img or qemu-io not found in PATH (Debian: qemu-utils)";
    }
    MustRun({"qemu-img", "create", "-q", "-f", "qcow2", base_, "4M"});
    MustRun({"qemu-io", "-c", "write -P 0x5a 0 64k", base_});
    MustRun({"qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", top_});
    MustRun({"qemu-io", "-c", "write -P 0xa5 64k 64k", top_});
  }

  TempDir dir_;
  std::string base_ = dir_.File("base.qcow2");
  std::string top_ = dir_.File("top.qcow2");
};

TEST_F(LockInteropTest, ForkvmmWriterBlocksQemuInfo) {
  auto disk = OpenImage(top_, ImageFormat::kQcow2);
  ASSERT_TRUE(disk.ok()) << disk.error().message();

  testing::ProcessResult info = RunProcess({"qemu-img", "info", top_});
  EXPECT_NE(info.exit_code, 0);
  EXPECT_NE(info.err.find("Failed to get shared \"write\" lock"), std::string::npos) << info.err;
  testing::ProcessResult shared = RunProcess({"qemu-img", "info", "-U", top_});
  EXPECT_EQ(shared.exit_code, 0) << shared.err;
}

TEST_F(LockInteropTest, ForkvmmBackingBlocksQemuWriter) {
  auto disk = OpenImage(top_, ImageFormat::kQcow2);
  ASSERT_TRUE(disk.ok()) << disk.error().message();

  // The backing layer is read by forkvmm, so QEMU may read it but not write it.
  testing::ProcessResult write = RunProcess({"qemu-io", "-c", "write 0 512", base_});
  EXPECT_NE(write.exit_code, 0);
  EXPECT_NE(write.err.find("Failed to get \"write\" lock"), std::string::npos) << write.err;
  testing::ProcessResult info = RunProcess({"qemu-img", "info", base_});
  EXPECT_EQ(info.exit_code, 0) << info.err;
  testing::ProcessResult commit = RunProcess({"qemu-img", "commit", top_});
  EXPECT_NE(commit.exit_code, 0);
}

TEST_F(LockInteropTest, QemuIoHolderBlocksForkvmm) {
  BackgroundProcess holder({"qemu-io", "-c", "sleep 600000", top_});
  ASSERT_TRUE(WaitForLock(top_, kPermWrite)) << "qemu-io did not lock " << top_;

  auto disk = OpenImage(top_, ImageFormat::kQcow2);
  ASSERT_FALSE(disk.ok());
  EXPECT_EQ(disk.error().message(), InUse(top_, "\"write\""));
  ExpectImgFails({"commit", "-q", top_}, top_, InUse(top_, "\"write\""));
  ExpectImgFails({"rebase", "-q", "-b", "", top_}, top_, InUse(top_, "\"write\""));
  ExpectImgFails({"check", "-r", "leaks", top_}, top_, InUse(top_, "\"write\""));
  ExpectImgFails({"create", "-q", "-f", "qcow2", top_, "1M"}, top_, InUse(top_, "\"write\""));
  ExpectImgFails({"info", top_}, top_, InUse(top_, "shared \"write\""));
  // qemu-io holds its backing file read-only, like forkvmm's frozen layers.
  auto backing_writer = OpenImage(base_, ImageFormat::kQcow2);
  ASSERT_FALSE(backing_writer.ok());
  EXPECT_EQ(backing_writer.error().message(), InUse(base_, "\"write\""));

  holder.Kill();
  auto reopened = OpenImage(top_, ImageFormat::kQcow2);
  EXPECT_TRUE(reopened.ok()) << reopened.error().message();
}

TEST_F(LockInteropTest, QemuSystemHolderBlocksForkvmm) {
  if (!InPath("qemu-system-x86_64")) {
    GTEST_SKIP() << "qemu-system-x86_64 not found in PATH (Debian: qemu-system-x86)";
  }
  BackgroundProcess holder({"qemu-system-x86_64", "-S", "-nographic", "-nodefaults",
                            "-machine", "none", "-monitor", "none", "-serial", "none",
                            "-drive", "file=" + top_ + ",format=qcow2,if=none,id=disk0"});
  ASSERT_TRUE(WaitForLock(top_, kPermWrite)) << "qemu-system-x86_64 did not lock " << top_;

  auto disk = OpenImage(top_, ImageFormat::kQcow2);
  ASSERT_FALSE(disk.ok());
  EXPECT_EQ(disk.error().message(), InUse(top_, "\"write\""));
  auto backing_writer = OpenImage(base_, ImageFormat::kQcow2);
  ASSERT_FALSE(backing_writer.ok());
  EXPECT_EQ(backing_writer.error().message(), InUse(base_, "\"write\""));
  auto shared = OpenImage(top_, ImageFormat::kQcow2, {.read_only = true, .force_share = true});
  EXPECT_TRUE(shared.ok()) << shared.error().message();
}

// The problem a user hit: forked VMs run on a frozen layer, and a second
// writer on that layer or a commit of a live overlay changed their disks.
TEST_F(LockInteropTest, RunningForkRefusesWritersOfItsLayers) {
  auto top = OpenImage(top_, ImageFormat::kQcow2);
  ASSERT_TRUE(top.ok()) << top.error().message();
  const std::string parent = dir_.File("parent.qcow2");
  const std::string child = dir_.File("child.qcow2");
  Status branched = FreezeAndBranch(**top, parent, child);
  ASSERT_TRUE(branched.ok()) << branched.error().message();
  auto parent_disk = OpenOverlayOn(parent, std::move(top).value());
  ASSERT_TRUE(parent_disk.ok()) << parent_disk.error().message();
  auto child_disk = OpenImage(child, ImageFormat::kQcow2);
  ASSERT_TRUE(child_disk.ok()) << child_disk.error().message();

  auto second_run = OpenImage(top_, ImageFormat::kQcow2);
  ASSERT_FALSE(second_run.ok());
  EXPECT_EQ(second_run.error().message(), InUse(top_, "\"write\""));
  ExpectImgFails({"commit", "-q", parent}, parent, InUse(parent, "\"write\""));
  ExpectImgFails({"commit", "-q", child}, child, InUse(child, "\"write\""));

  testing::ProcessResult qemu_commit = RunProcess({"qemu-img", "commit", parent});
  EXPECT_NE(qemu_commit.exit_code, 0);
  EXPECT_NE(qemu_commit.err.find("Failed to get \"write\" lock"), std::string::npos)
      << qemu_commit.err;
  testing::ProcessResult qemu_write = RunProcess({"qemu-io", "-c", "write 0 512", top_});
  EXPECT_NE(qemu_write.exit_code, 0);
  EXPECT_NE(qemu_write.err.find("Failed to get \"write\" lock"), std::string::npos)
      << qemu_write.err;
  // Everyone may still read the frozen layer.
  testing::ProcessResult qemu_read = RunProcess({"qemu-io", "-r", "-c", "read -P 0xa5 64k 64k",
                                                 top_});
  EXPECT_EQ(qemu_read.exit_code, 0) << qemu_read.err;

  child_disk->reset();
  parent_disk->reset();
  MustRun({"qemu-img", "check", parent});
  MustRun({"qemu-img", "check", child});
}

}  // namespace
}  // namespace forkvmm::block
