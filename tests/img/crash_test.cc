// Crash safety: a process writing to an image is killed with SIGKILL at a
// random moment. The image must then pass `qemu-img check` with at most
// leaked clusters (exit 0 or 3, never corruption), and every write that a
// completed flush covered must read back intact.
#include <fmt/core.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <random>

#include "devices/block/image.h"
#include "devices/block/qcow2_check.h"
#include "devices/block/test_support.h"
#include "tests/img/img_test_util.h"

namespace forkvmm::block {
namespace {

using testing::RunProcess;
using testing::TempDir;

// Records are written back to back; they straddle cluster boundaries, so
// writes both allocate and copy partial clusters.
constexpr uint64_t kRecordSize = 20000;
constexpr uint64_t kDiskSize = 256 << 20;
constexpr uint64_t kRecordsPerFlush = 8;

void FillRecord(uint64_t index, uint8_t* out) {
  for (uint64_t j = 0; j < kRecordSize; ++j) out[j] = static_cast<uint8_t>(index * 131 + j * 7 + 1);
}

void Report(int fd, uint64_t durable_records) {
  ssize_t unused = ::write(fd, &durable_records, sizeof(durable_records));
  (void)unused;
}

// Writes records with the synchronous API until the disk is full.
// Runs `qemu-img check` on `image`, retrying for up to 5 s while QEMU
// reports that the image is locked. A writer killed with io_uring requests
// in flight keeps its file, and with it its OFD lock, open until the
// kernel's asynchronous ring teardown has finished, which waitpid() does
// not wait for.
testing::ProcessResult QemuImgCheck(const std::string& image) {
  constexpr int kAttempts = 50;
  testing::ProcessResult check;
  for (int attempt = 0; attempt < kAttempts; ++attempt) {
    check = RunProcess({"qemu-img", "check", image});
    if (check.err.find("Failed to get") == std::string::npos) break;
    usleep(100000);
  }
  return check;
}

int WriteSynchronously(BlockBackend& disk, int report_fd) {
  std::vector<uint8_t> record(kRecordSize);
  for (uint64_t i = 0; (i + 1) * kRecordSize <= kDiskSize; ++i) {
    FillRecord(i, record.data());
    if (!disk.Write(i * kRecordSize, record).ok()) return 3;
    if ((i + 1) % kRecordsPerFlush == 0) {
      if (!disk.Flush().ok()) return 4;
      Report(report_fd, i + 1);
    }
  }
  return 0;
}

// Writes records through io_uring, a batch at a time, flushing after each.
int WriteAsynchronously(BlockBackend& disk, int report_fd) {
  if (!disk.StartAsync().ok()) return 5;
  std::vector<std::vector<uint8_t>> records(kRecordsPerFlush, std::vector<uint8_t>(kRecordSize));
  bool failed = false;
  for (uint64_t first = 0; (first + kRecordsPerFlush) * kRecordSize <= kDiskSize;
       first += kRecordsPerFlush) {
    for (uint64_t k = 0; k < kRecordsPerFlush; ++k) {
      FillRecord(first + k, records[k].data());
      disk.Submit({.op = BlockOp::kWrite,
                   .offset = (first + k) * kRecordSize,
                   .iov = {{records[k].data(), kRecordSize}},
                   .done = [&](Status s) { failed |= !s.ok(); }});
    }
    if (!disk.Drain().ok() || failed) return 6;
    disk.Submit({.op = BlockOp::kFlush, .done = [&](Status s) { failed |= !s.ok(); }});
    if (!disk.Drain().ok() || failed) return 7;
    Report(report_fd, first + kRecordsPerFlush);
  }
  return 0;
}

struct CrashCase {
  uint64_t cluster_size;
  bool with_backing;
  bool async;
};

class CrashTest : public ::testing::TestWithParam<CrashCase> {};

TEST_P(CrashTest, KilledWriterLeavesConsistentImage) {
  SKIP_WITHOUT_QEMU();
  const CrashCase param = GetParam();
  std::mt19937 rng(static_cast<uint32_t>(param.cluster_size + param.async * 7 +
                                         param.with_backing * 13));
  for (int round = 0; round < 3; ++round) {
    SCOPED_TRACE(fmt::format("round {}", round));
    TempDir dir;
    const std::string image = dir.File("disk.qcow2");
    std::vector<uint8_t> backing_data;
    if (param.with_backing) {
      backing_data = testing::RandomBytes(16 << 20, round);
      testing::WriteFileBytes(dir.File("base.raw"), backing_data);
    }
    Status created = CreateImage(
        image, {.size = kDiskSize,
                .cluster_size = param.cluster_size,
                .backing_file = param.with_backing ? "base.raw" : "",
                .backing_format = param.with_backing ? std::optional(ImageFormat::kRaw)
                                                     : std::nullopt});
    ASSERT_TRUE(created.ok()) << created.error().message();

    int pipe_fds[2];
    ASSERT_EQ(pipe(pipe_fds), 0);
    pid_t child = fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
      close(pipe_fds[0]);
      auto disk = OpenImage(image, ImageFormat::kQcow2);
      if (!disk.ok()) _exit(2);
      _exit(param.async ? WriteAsynchronously(**disk, pipe_fds[1])
                        : WriteSynchronously(**disk, pipe_fds[1]));
    }
    close(pipe_fds[1]);
    usleep(50000 + rng() % 400000);
    ASSERT_EQ(kill(child, SIGKILL), 0);  // by PID, the child this test started
    int status = 0;
    ASSERT_EQ(waitpid(child, &status, 0), child);
    EXPECT_TRUE(WIFSIGNALED(status)) << "the writer finished before it was killed";
    uint64_t durable = 0;
    for (uint64_t count; read(pipe_fds[0], &count, sizeof(count)) == sizeof(count);) {
      durable = count;
    }
    close(pipe_fds[0]);
    RecordProperty("durable_records", static_cast<int>(durable));

    testing::ProcessResult check = QemuImgCheck(image);
    EXPECT_TRUE(check.exit_code == 0 || check.exit_code == 3)
        << "qemu-img check exit " << check.exit_code << ":\n" << check.out << check.err;
    auto ours = qcow2::CheckImage(image, qcow2::RepairMode::kNone);
    ASSERT_TRUE(ours.ok()) << ours.error().message();
    EXPECT_EQ(ours->corruptions, 0u);

    // Flushed records survive; the rest of the disk shows the backing file or zeros.
    {
      auto disk = OpenImage(image, ImageFormat::kQcow2, {.read_only = true}).value();
      std::vector<uint8_t> got(kRecordSize);
      std::vector<uint8_t> want(kRecordSize);
      for (uint64_t i = 0; i < durable; ++i) {
        ASSERT_TRUE(disk->Read(i * kRecordSize, got).ok());
        FillRecord(i, want.data());
        ASSERT_EQ(got, want) << "flushed record " << i << " of " << durable << " is damaged";
      }
    }
    // The image stays usable: write after the crash, then repair the leaks.
    {
      auto disk = OpenImage(image, ImageFormat::kQcow2);
      ASSERT_TRUE(disk.ok()) << disk.error().message();
      ASSERT_TRUE((*disk)->Write(kDiskSize - 70000, std::vector<uint8_t>(70000, 0xab)).ok());
    }
    testing::ProcessResult repair =
        RunProcess({testing::ForkvmmImg(), "img", "check", "-q", "-r", "leaks", image});
    EXPECT_EQ(repair.exit_code, 0) << repair.err;
    EXPECT_EQ(RunProcess({"qemu-img", "check", image}).exit_code, 0);
  }
}

INSTANTIATE_TEST_SUITE_P(Writers, CrashTest,
                         ::testing::Values(CrashCase{65536, false, false},
                                           CrashCase{65536, true, true},
                                           CrashCase{4096, true, false},
                                           CrashCase{512, false, true},
                                           CrashCase{2 << 20, true, true}),
                         [](const auto& test) {
                           return fmt::format("c{}_{}_{}", test.param.cluster_size,
                                              test.param.with_backing ? "backing" : "alone",
                                              test.param.async ? "async" : "sync");
                         });

}  // namespace
}  // namespace forkvmm::block
