// Runs the blk test guest, whose ring-3 virtio-blk driver the fork tests and
// the disk benchmarks rely on, against a qcow2 disk and checks its exact
// output: the self-test, the read-only case and the benchmark mode.
#include <cstdint>
#include <regex>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "tests/integration/test_support.h"

namespace forkvmm::integration {
namespace {

using namespace std::chrono_literals;

constexpr uint64_t kSectors = 131072;  // 64 MiB

// Creates an empty 64 MiB qcow2 image at `path` with `forkvmm img create`.
void CreateImage(const std::string& path) {
  ProcessResult result = RunProcess(
      {ForkvmmPath(), "img", "create", "-q", "-f", "qcow2", path, "64M"}, {.timeout = 10s});
  ASSERT_TRUE(result.exited) << result.Describe();
  ASSERT_EQ(result.exit_code, 0) << result.Describe();
}

ProcessResult RunBlk(const std::string& disk, const std::string& command_line) {
  return RunForkvmm({"--kernel", GuestPath("blk"), "--mem", "64", "--disk", disk, "--cmdline",
                     command_line},
                    {.timeout = 30s});
}

TEST(DiskGuestTest, SelfTestPasses) {
  SKIP_WITHOUT_KVM();
  TemporaryDirectory directory;
  std::string image = directory.path() + "/disk.qcow2";
  ASSERT_NO_FATAL_FAILURE(CreateImage(image));
  ProcessResult result = RunBlk(image + ",format=qcow2", "");
  ASSERT_TRUE(result.exited) << result.Describe();
  EXPECT_EQ(result.exit_code, 0) << result.Describe();
  EXPECT_EQ(result.standard_output,
            "blk: disk 0: 131072 sectors, writable, id 'forkvmm-disk0'\n"
            "blk: PASS: sectors 0, 1-8 and 131071 read back as written, reads past the end "
            "failed with IOERR, flush succeeded\n");
}

// The driver takes VIRTIO_BLK_F_RO when offered, and the self-test stops
// there.
TEST(DiskGuestTest, SelfTestSeesReadOnlyDisk) {
  SKIP_WITHOUT_KVM();
  TemporaryDirectory directory;
  std::string image = directory.path() + "/disk.qcow2";
  ASSERT_NO_FATAL_FAILURE(CreateImage(image));
  ProcessResult result = RunBlk(image + ",format=qcow2,ro", "");
  ASSERT_TRUE(result.exited) << result.Describe();
  EXPECT_EQ(result.exit_code, 1) << result.Describe();
  EXPECT_EQ(result.standard_output,
            "blk: disk 0: 131072 sectors, read-only, id 'forkvmm-disk0'\n"
            "blk: FAIL: the self-test needs a writable disk\n");
}

// The benchmark mode runs each phase with the requested counts, finds every
// word it wrote, and reports the guest's elapsed time.
TEST(DiskGuestTest, BenchmarkReportsEachPhase) {
  SKIP_WITHOUT_KVM();
  TemporaryDirectory directory;
  std::string image = directory.path() + "/disk.qcow2";
  ASSERT_NO_FATAL_FAILURE(CreateImage(image));
  ProcessResult result = RunBlk(image + ",format=qcow2",
                                "blk.bench=1 blk.ops=200 blk.seq_mib=4 blk.depth=4 blk.seed=7");
  ASSERT_TRUE(result.exited) << result.Describe();
  ASSERT_EQ(result.exit_code, 0) << result.Describe();
  std::vector<std::string> lines = SplitLines(result.standard_output);
  ASSERT_EQ(lines.size(), 6u) << result.standard_output;
  EXPECT_EQ(lines[0], "blk: bench: depth 4, request 131072 bytes, seed 7, disk " +
                          std::to_string(kSectors) + " sectors");
  const std::string kPhases[][2] = {
      {"sequential-write", "32 requests, 4194304 bytes, (\\d+) ns"},
      {"sequential-read", "32 requests, 4194304 bytes, (\\d+) ns, 0 mismatched words"},
      {"random-write", "200 requests, 819200 bytes, (\\d+) ns"},
      {"random-read", "200 requests, 819200 bytes, (\\d+) ns"},
  };
  for (size_t i = 0; i < 4; ++i) {
    SCOPED_TRACE(kPhases[i][0]);
    std::smatch match;
    std::string pattern = "blk: bench " + kPhases[i][0] + ": " + kPhases[i][1];
    ASSERT_TRUE(std::regex_match(lines[i + 1], match, std::regex(pattern))) << lines[i + 1];
    EXPECT_GT(std::stoull(match[1]), 0u);
    RecordProperty(kPhases[i][0] + "_ns", match[1].str());
  }
  EXPECT_EQ(lines[5], "blk: bench done");
}

}  // namespace
}  // namespace forkvmm::integration
