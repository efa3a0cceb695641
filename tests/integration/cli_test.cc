// The forkvmm command line through the real binary. Bad input to
// `forkvmm run` must be rejected before the guest runs, with exactly one
// line on stderr that starts with "forkvmm run:" and names the value or
// file and the reason. The VM commands (console, kill, pause, qmp) run
// against test guests booted detached in a runtime directory of the test.
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <ostream>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
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

// Expects a usage error from a forkvmm command: exit status 2 and one line
// on stderr that starts with `prefix` and matches `expected`.
void ExpectUsageError(const ProcessResult& result, const std::string& prefix,
                      const std::string& expected) {
  ASSERT_TRUE(result.exited) << result.Describe();
  EXPECT_EQ(result.exit_code, 2) << result.Describe();
  std::vector<std::string> lines = SplitLines(result.standard_error);
  ASSERT_EQ(lines.size(), 1u) << result.Describe();
  EXPECT_TRUE(lines[0].starts_with(prefix)) << lines[0];
  EXPECT_THAT(lines[0], ContainsRegex(expected));
}

// Runs `forkvmm <arguments>` with FORKVMM_RUNTIME_DIR set to an empty
// directory of this test, so a command that parsed wrongly finds no VM.
ProcessResult RunIsolated(std::vector<std::string> arguments) {
  static TemporaryDirectory runtime_directory;
  arguments.insert(arguments.begin(), ForkvmmPath());
  return RunProcess(arguments,
                    {.environment = {"FORKVMM_RUNTIME_DIR=" + runtime_directory.path()}});
}

TEST(CliUsageTest, KillRejectsInvalidTimeout) {
  for (const char* timeout : {"-1", "nan", "inf", "1s"}) {
    SCOPED_TRACE(std::string("--timeout '") + timeout + "'");
    ProcessResult result = RunIsolated({"kill", "vm", "--timeout", timeout});
    ExpectUsageError(result, "forkvmm kill: ",
                     std::string("--timeout.*invalid value '") + timeout +
                         "': expected a number of seconds >= 0");
  }
}

TEST(CliUsageTest, ConsoleRejectsInvalidSeconds) {
  for (const char* option : {"--linger", "--timeout"}) {
    SCOPED_TRACE(option);
    ProcessResult result = RunIsolated({"console", "vm", option, "-0.5"});
    ExpectUsageError(result, "forkvmm console: ",
                     "invalid value '-0\\.5': expected a number of seconds >= 0");
  }
}

TEST(CliUsageTest, EmptyForkCountIsQuoted) {
  ProcessResult result = RunIsolated({"fork", "vm", "--count", ""});
  ASSERT_TRUE(result.exited) << result.Describe();
  EXPECT_EQ(result.exit_code, 1);
  EXPECT_EQ(result.standard_error,
            "forkvmm fork: invalid --count '': expected an integer from 1 to 256\n");
}

TEST(CliUsageTest, HelpNamesDefaultsAndDetach) {
  ProcessResult ls = RunIsolated({"ls", "--help"});
  EXPECT_THAT(ls.standard_output, ::testing::HasSubstr("default: $FORKVMM_RUNTIME_DIR"));
  ProcessResult top = RunIsolated({"--help"});
  EXPECT_THAT(top.standard_output, ::testing::HasSubstr("--detach"));
  ProcessResult console = RunIsolated({"console", "--help"});
  EXPECT_THAT(console.standard_output, ::testing::HasSubstr("--linger"));
  EXPECT_THAT(console.standard_output, ::testing::HasSubstr("many seconds"));
}

// A serial log that cannot be written loses console output but not the VM:
// one error line names the file and the errno, and --stats counts the bytes.
TEST(CliSerialLogTest, WriteErrorIsReportedOnce) {
  SKIP_WITHOUT_KVM();
  ProcessResult result = RunForkvmm(
      {"--kernel", GuestPath("serial"), "--mem", "64", "--serial-log", "/dev/full", "--stats"},
      {.timeout = 20s});
  ASSERT_TRUE(result.exited) << result.Describe();
  EXPECT_EQ(result.exit_code, 0) << result.Describe();
  EXPECT_THAT(result.standard_output, ::testing::HasSubstr("serial: PASS"));
  size_t errors = 0;
  bool counted = false;
  for (const std::string& line : SplitLines(result.standard_error)) {
    if (line.find("serial log /dev/full: write failed: No space left on device") !=
        std::string::npos) {
      ++errors;
    }
    if (std::regex_search(line, std::regex("^serial log /dev/full: [1-9][0-9]* bytes dropped "
                                           "after write errors$"))) {
      counted = true;
    }
  }
  EXPECT_EQ(errors, 1u) << result.standard_error;
  EXPECT_TRUE(counted) << result.standard_error;
}

// Boots test guests detached in a runtime directory of its own and kills
// them at the end.
class CliVmTest : public ::testing::Test {
 protected:
  void TearDown() override {
    for (const std::string& id : vms_) {
      RunProcess({ForkvmmPath(), "kill", id, "--runtime-dir", runtime_, "--timeout", "5"},
                 {.timeout = 15s});
    }
  }

  // Runs `forkvmm <arguments> --runtime-dir <the test's>`.
  ProcessResult Forkvmm(std::vector<std::string> arguments,
                        std::chrono::milliseconds timeout = 15s) {
    arguments.insert(arguments.begin(), ForkvmmPath());
    arguments.insert(arguments.end(), {"--runtime-dir", runtime_});
    return RunProcess(arguments, {.timeout = timeout});
  }

  // Boots `guest` detached and returns its id, or "" after a test failure.
  std::string Boot(const std::string& guest, const std::string& command_line) {
    ProcessResult result =
        Forkvmm({"run", "--detach", "--kernel", GuestPath(guest), "--mem", "64", "--cmdline",
                 command_line, "--serial-log", directory_.path() + "/{id}.log"});
    std::vector<std::string> lines = SplitLines(result.standard_output);
    if (!result.exited || result.exit_code != 0 || lines.size() != 1) {
      ADD_FAILURE() << "forkvmm run --detach failed: " << result.Describe();
      return "";
    }
    vms_.push_back(lines[0]);
    return lines[0];
  }

  std::string Log(const std::string& id) {
    std::ifstream in(directory_.path() + "/" + id + ".log", std::ios::binary);
    std::ostringstream out;
    out << in.rdbuf();
    return out.str();
  }

  // Waits up to 20 s for `text` in the VM's console output.
  bool WaitForOutput(const std::string& id, const std::string& text) {
    auto deadline = std::chrono::steady_clock::now() + ScaledTimeout(20s);
    while (std::chrono::steady_clock::now() < deadline) {
      if (Log(id).find(text) != std::string::npos) return true;
      std::this_thread::sleep_for(20ms);
    }
    ADD_FAILURE() << "VM " << id << " did not print '" << text << "':\n" << Log(id);
    return false;
  }

  // fork_probe with no periodic reports, so its console is quiet between
  // commands.
  std::string BootQuietProbe() {
    std::string id = Boot("fork_probe", "fork_probe.every=1000000");
    if (!id.empty() && !WaitForOutput(id, "fork_probe: ready")) return "";
    return id;
  }

  TemporaryDirectory directory_;
  std::string runtime_ = directory_.path() + "/runtime";
  std::vector<std::string> vms_;
};

TEST_F(CliVmTest, ConsoleDetachesAfterEndOfInput) {
  SKIP_WITHOUT_KVM();
  std::string id = BootQuietProbe();
  ASSERT_FALSE(id.empty());
  // stdin is /dev/null.
  ProcessResult result = Forkvmm({"console", id, "--linger", "0.5"}, 10s);
  ASSERT_FALSE(result.timed_out) << result.Describe();
  EXPECT_TRUE(result.exited) << result.Describe();
  EXPECT_EQ(result.exit_code, 0) << result.Describe();
  EXPECT_EQ(result.standard_error, "");
}

TEST_F(CliVmTest, ConsoleRelaysReplyToPipedCommand) {
  SKIP_WITHOUT_KVM();
  std::string id = BootQuietProbe();
  ASSERT_FALSE(id.empty());
  std::string script = "printf 'mem read\\n' | '" + ForkvmmPath() + "' console " + id +
                       " --runtime-dir '" + runtime_ + "'";
  ProcessResult result = RunProcess({"/bin/sh", "-c", script}, {.timeout = 15s});
  ASSERT_FALSE(result.timed_out) << result.Describe();
  EXPECT_EQ(result.exit_code, 0) << result.Describe();
  EXPECT_THAT(result.standard_output,
              ContainsRegex("fork_probe: mem 0x802000 holds 0x[0-9a-f]{16}"));
}

TEST_F(CliVmTest, ConsoleTimeoutEndsBusyConsole) {
  SKIP_WITHOUT_KVM();
  // 100 lines a second: the output never goes quiet for the linger time.
  std::string id = Boot("counter", "counter.every=1");
  ASSERT_FALSE(id.empty());
  ASSERT_TRUE(WaitForOutput(id, "counter: cpu 0 tick"));
  ProcessResult result = Forkvmm({"console", id, "--linger", "30", "--timeout", "1"}, 10s);
  ASSERT_FALSE(result.timed_out) << result.Describe();
  EXPECT_EQ(result.exit_code, 0) << result.Describe();
  EXPECT_LT(result.elapsed, ScaledTimeout(5s));
  EXPECT_THAT(result.standard_output, ::testing::HasSubstr("counter: cpu 0 tick"));
}

// Connects to the control socket `path` and reads the greeting. Returns the
// fd, or -1 after a test failure.
int ConnectAndReadGreeting(const std::string& path) {
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::memcpy(address.sun_path, path.c_str(), path.size() + 1);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0 || connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0) {
    ADD_FAILURE() << "connecting to " << path << " failed: " << std::strerror(errno);
    if (fd >= 0) close(fd);
    return -1;
  }
  char c = 0;
  while (read(fd, &c, 1) == 1 && c != '\n') {
  }
  EXPECT_EQ(c, '\n') << "no greeting from " << path;
  return fd;
}

TEST_F(CliVmTest, PauseReportsTooManyConnections) {
  SKIP_WITHOUT_KVM();
  std::string id = BootQuietProbe();
  ASSERT_FALSE(id.empty());
  std::vector<int> fds;
  for (int i = 0; i < 64; ++i) {
    int fd = ConnectAndReadGreeting(runtime_ + "/" + id + "/control.sock");
    if (fd < 0) break;
    fds.push_back(fd);
  }
  ProcessResult result = Forkvmm({"pause", id});
  for (int fd : fds) close(fd);
  ASSERT_EQ(fds.size(), 64u);
  EXPECT_EQ(result.exit_code, 1) << result.Describe();
  EXPECT_THAT(result.standard_error,
              ContainsRegex("^forkvmm pause: .*control\\.sock: too many connections: the VM "
                            "serves at most 64 control clients, try again later\n$"));
}

TEST_F(CliVmTest, QmpRejectsRelativePaths) {
  SKIP_WITHOUT_KVM();
  std::string id = BootQuietProbe();
  ASSERT_FALSE(id.empty());
  ProcessResult fork = Forkvmm({"qmp", id, "fork", R"({"serial_log": "../../x.log"})"});
  EXPECT_EQ(fork.exit_code, 1) << fork.Describe();
  EXPECT_EQ(fork.standard_error,
            "forkvmm qmp: VM " + id +
                ": invalid fork argument serial_log \"../../x.log\": expected an absolute path\n");
  ProcessResult save = Forkvmm(
      {"qmp", id, "pmemsave", R"({"val": 0, "size": 4096, "filename": "memory.bin"})"});
  EXPECT_EQ(save.exit_code, 1) << save.Describe();
  EXPECT_EQ(save.standard_error,
            "forkvmm qmp: VM " + id +
                ": invalid pmemsave argument filename \"memory.bin\": expected an absolute "
                "path\n");
  ProcessResult list = Forkvmm({"ls", "--json"});
  size_t vms = 0;
  for (size_t at = list.standard_output.find("\"pid\""); at != std::string::npos;
       at = list.standard_output.find("\"pid\"", at + 1)) {
    ++vms;
  }
  EXPECT_EQ(vms, 1u) << "expected the VM and no child:\n" << list.standard_output;
}

TEST_F(CliVmTest, QmpRejectsUnknownArguments) {
  SKIP_WITHOUT_KVM();
  std::string id = BootQuietProbe();
  ASSERT_FALSE(id.empty());
  ProcessResult status = Forkvmm({"qmp", id, "query-status", R"({"verbose": true})"});
  EXPECT_EQ(status.exit_code, 1) << status.Describe();
  EXPECT_EQ(status.standard_error,
            "forkvmm qmp: VM " + id +
                ": unexpected argument 'verbose' for query-status, which takes no arguments\n");
  ProcessResult fork = Forkvmm({"qmp", id, "fork", R"({"cuont": 2})"});
  EXPECT_EQ(fork.exit_code, 1) << fork.Describe();
  EXPECT_EQ(fork.standard_error,
            "forkvmm qmp: VM " + id +
                ": unexpected argument 'cuont' for fork, which takes count, paused, name and "
                "serial_log\n");
}

}  // namespace
}  // namespace forkvmm::integration
