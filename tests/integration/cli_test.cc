// Bad input to `forkvmm run`, through the real binary: each case must be
// rejected before the guest runs, with exactly one line on stderr that
// starts with "forkvmm run:" and names the value or file and the reason.
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/integration/test_support.h"

namespace forkvmm::integration {
namespace {

using namespace std::chrono_literals;
using ::testing::ContainsRegex;

struct CliCase {
  const char* name;
  // Arguments after `forkvmm run --no-stdin`. "{dir}" is replaced by the
  // temporary directory and "{guest}" by the serial guest's path.
  std::vector<std::string> arguments;
  // A regular expression the error line must contain: the value or file,
  // and the reason, in either order.
  const char* expected;
};

void PrintTo(const CliCase& test_case, std::ostream* out) { *out << test_case.name; }

// Files the cases refer to, created once in a temporary directory.
class CliTest : public ::testing::TestWithParam<CliCase> {
 protected:
  static void SetUpTestSuite();
  static void TearDownTestSuite();
  static TemporaryDirectory* directory_;
};

TemporaryDirectory* CliTest::directory_ = nullptr;

void CliTest::SetUpTestSuite() {
  directory_ = new TemporaryDirectory();
  std::string guest = ReadFile(GuestPath("serial"));
  ASSERT_GT(guest.size(), 5000u);
  // The ELF header and part of the program header table.
  directory_->WriteFile("truncated-header.elf", guest.substr(0, 100));
  // Headers complete, first segment cut short.
  directory_->WriteFile("truncated-segment.elf", guest.substr(0, 5000));
  directory_->WriteFile("not-a-kernel.txt", "this is a text file, not a kernel\n");
  // 128 MiB of zeros, sparse: larger than the 64 MiB guest.
  std::string initrd = directory_->WriteFile("large-initrd.img", "");
  ASSERT_EQ(truncate(initrd.c_str(), 128 << 20), 0);
}

void CliTest::TearDownTestSuite() {
  delete directory_;
  directory_ = nullptr;
}

std::string Substitute(std::string text, const std::string& directory) {
  for (auto [key, value] : {std::pair<std::string, std::string>{"{dir}", directory},
                            {"{guest}", GuestPath("serial")}}) {
    for (size_t at = text.find(key); at != std::string::npos; at = text.find(key)) {
      text.replace(at, key.size(), value);
    }
  }
  return text;
}

// Checks that forkvmm refused to run: a non-zero status, no guest output,
// and stderr holding exactly one line, "forkvmm run: ..." matching
// `expected`. The error line is checked even when other lines surround it.
void ExpectRejected(const ProcessResult& result, const std::string& expected) {
  ASSERT_FALSE(result.timed_out) << result.Describe();
  ASSERT_TRUE(result.exited) << result.Describe();
  EXPECT_NE(result.exit_code, 0) << result.Describe();
  EXPECT_EQ(result.standard_output, "") << "the guest must not run";
  std::vector<std::string> lines = SplitLines(result.standard_error);
  EXPECT_EQ(lines.size(), 1u) << "expected one line on stderr:\n" << result.standard_error;
  auto error = std::find_if(lines.begin(), lines.end(), [](const std::string& line) {
    return line.starts_with("forkvmm run: ");
  });
  ASSERT_TRUE(error != lines.end()) << "no line starts with \"forkvmm run: \":\n"
                                    << result.standard_error;
  EXPECT_THAT(*error, ContainsRegex(expected));
}

TEST_P(CliTest, RejectsWithOneErrorLine) {
  SKIP_WITHOUT_KVM();
  const CliCase& test_case = GetParam();
  std::vector<std::string> arguments;
  for (const std::string& argument : test_case.arguments) {
    arguments.push_back(Substitute(argument, directory_->path()));
  }
  ProcessResult result = RunForkvmm(arguments, {.timeout = 10s});
  ExpectRejected(result, Substitute(test_case.expected, directory_->path()));
}

const CliCase kCliCases[] = {
    {"MissingKernel",
     {"--kernel", "{dir}/no-such-kernel.elf", "--mem", "64"},
     "no-such-kernel\\.elf.*(does not exist|not found|No such file)|"
     "(does not exist|not found|No such file).*no-such-kernel\\.elf"},
    {"TruncatedElfHeader",
     {"--kernel", "{dir}/truncated-header.elf", "--mem", "64"},
     "truncated-header\\.elf.*truncated"},
    {"TruncatedElfSegment",
     {"--kernel", "{dir}/truncated-segment.elf", "--mem", "64"},
     "truncated-segment\\.elf.*truncated"},
    {"NotAKernel",
     {"--kernel", "{dir}/not-a-kernel.txt", "--mem", "64"},
     "not-a-kernel\\.txt.*not a"},
    {"MissingInitrd",
     {"--kernel", "{guest}", "--mem", "64", "--initrd", "{dir}/no-such-initrd.img"},
     "no-such-initrd\\.img.*(does not exist|not found|No such file)|"
     "(does not exist|not found|No such file).*no-such-initrd\\.img"},
    {"InitrdLargerThanRam",
     {"--kernel", "{guest}", "--mem", "64", "--initrd", "{dir}/large-initrd.img"},
     "large-initrd\\.img.*does not fit"},
    {"MemZero", {"--kernel", "{guest}", "--mem", "0"}, "(RAM size|--mem:?) 0\\b.*(outside|invalid|small)"},
    {"MemBelowMinimum",
     {"--kernel", "{guest}", "--mem", "8M"},
     "(8M|8388608|8 MiB).*(outside|invalid|small|minimum)"},
    {"MemBeyondMaximum",
     {"--kernel", "{guest}", "--mem", "2000T"},
     "(2000T|2199023255552000).*(outside|invalid|large|maximum)"},
    {"MemOverflow", {"--kernel", "{guest}", "--mem", "99999999999T"}, "99999999999T.*too large"},
    {"MemNotANumber", {"--kernel", "{guest}", "--mem", "abc"}, "invalid.*'abc'|'abc'.*invalid"},
    {"CpusZero", {"--kernel", "{guest}", "--mem", "64", "--cpus", "0"}, "vCPU count 0"},
    {"CpusTooMany",
     {"--kernel", "{guest}", "--mem", "64", "--cpus", "100000"},
     "vCPU count 100000"},
    {"CpusNegative",
     {"--kernel", "{guest}", "--mem", "64", "--cpus", "-1"},
     "--cpus.*-1.*(invalid|not|negative)|(invalid|not|negative).*--cpus.*-1"},
    {"CpusNotANumber",
     {"--kernel", "{guest}", "--mem", "64", "--cpus", "abc"},
     "--cpus.*abc.*(invalid|not)|(invalid|not).*--cpus.*abc"},
};

INSTANTIATE_TEST_SUITE_P(BadInput, CliTest, ::testing::ValuesIn(kCliCases),
                         [](const ::testing::TestParamInfo<CliCase>& case_info) {
                           return std::string(case_info.param.name);
                         });

// A RAM size the host cannot back is as absurd as one past the supported
// maximum: 1 TiB on a host with less RAM than that.
TEST(CliMemoryTest, RejectsRamLargerThanHost) {
  SKIP_WITHOUT_KVM();
  long pages = sysconf(_SC_PHYS_PAGES);
  long page_size = sysconf(_SC_PAGESIZE);
  uint64_t host_bytes = static_cast<uint64_t>(pages) * static_cast<uint64_t>(page_size);
  if (host_bytes >= (uint64_t{1} << 40)) GTEST_SKIP() << "skipped: this host has 1 TiB of RAM";
  ProcessResult result =
      RunForkvmm({"--kernel", GuestPath("serial"), "--mem", "1T"}, {.timeout = 20s});
  ExpectRejected(result, "(1T|1099511627776|1024 GiB)");
}

}  // namespace
}  // namespace forkvmm::integration
