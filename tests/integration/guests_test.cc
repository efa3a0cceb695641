// Boots each test guest (tests/guests) with the real forkvmm binary and
// checks the exit status and the exact console output.
#include <array>
#include <cstdint>
#include <regex>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/integration/test_support.h"

namespace forkvmm::integration {
namespace {

using namespace std::chrono_literals;
using ::testing::HasSubstr;

constexpr char kGuestExitedZero[] = "stopped: guest exited with code 0";

// RAM forkvmm's e820 map gives a guest of `megabytes` MiB, with low RAM
// ending at the MP table (0x9e000), RAM resuming at 1 MiB and the MMIO hole
// from 3 GiB to 4 GiB.
uint64_t ExpectedRamBytes(uint64_t megabytes) {
  constexpr uint64_t kMiB = uint64_t{1} << 20;
  constexpr uint64_t kBelowHole = 3072 * kMiB;
  uint64_t bytes = megabytes * kMiB;
  uint64_t low = std::min(bytes, kBelowHole);
  return 0x9e000 + (low - kMiB) + (bytes - low);
}

ProcessResult RunGuest(const std::string& guest, const std::vector<std::string>& arguments,
                       std::chrono::milliseconds timeout) {
  std::vector<std::string> all = {"--kernel", GuestPath(guest)};
  all.insert(all.end(), arguments.begin(), arguments.end());
  return RunForkvmm(all, {.timeout = timeout});
}

void ExpectExitedWith(const ProcessResult& result, int code) {
  ASSERT_FALSE(result.timed_out) << result.Describe();
  ASSERT_TRUE(result.exited) << result.Describe();
  EXPECT_EQ(result.exit_code, code) << result.Describe();
}

// Returns the captures of `pattern` matched against the whole of `line`, or
// an empty vector (and a test failure) if it does not match.
std::vector<std::string> Match(const std::string& line, const std::string& pattern) {
  std::smatch match;
  if (!std::regex_match(line, match, std::regex(pattern))) {
    ADD_FAILURE() << "line \"" << line << "\" does not match /" << pattern << "/";
    return {};
  }
  return {match.begin() + 1, match.end()};
}

// The UART's bytes and the debug device's share the console, in order.
constexpr char kSerialOutput[] =
    "serial: ring-3 console through MMIO\n"
    "serial: line 1 through the 16550 UART\n"
    "serial: line 2 through the 16550 UART\n"
    "serial: PASS: registers, scratch, loopback, modem status, transmit and THR-empty "
    "interrupts\n";

TEST(GuestTest, SerialWritesThroughUartAndMmio) {
  SKIP_WITHOUT_KVM();
  ProcessResult result = RunGuest("serial", {"--mem", "64"}, 10s);
  ExpectExitedWith(result, 0);
  EXPECT_EQ(result.standard_output, kSerialOutput);
  EXPECT_THAT(result.standard_error, HasSubstr(kGuestExitedZero));
}

TEST(GuestTest, SerialLogReceivesConsoleBytes) {
  SKIP_WITHOUT_KVM();
  TemporaryDirectory directory;
  std::string log = directory.path() + "/console.log";
  ProcessResult result = RunGuest("serial", {"--mem", "64", "--serial-log", log}, 10s);
  ExpectExitedWith(result, 0);
  EXPECT_EQ(result.standard_output, kSerialOutput);
  EXPECT_EQ(ReadFile(log), kSerialOutput);
}

// Checks memtest's output for a guest of `megabytes` MiB whose memory map
// has `ram_ranges` RAM ranges.
void CheckMemtest(const ProcessResult& result, uint64_t megabytes, size_t ram_ranges) {
  ExpectExitedWith(result, 0);
  std::vector<std::string> lines = SplitLines(result.standard_output);
  ASSERT_GE(lines.size(), 3u) << result.Describe();
  uint64_t ram = ExpectedRamBytes(megabytes);
  EXPECT_EQ(lines[0], "memtest: RAM " + std::to_string(ram) + " bytes in " +
                          std::to_string(ram_ranges) + " ranges");
  EXPECT_EQ(lines[1], "memtest: range 0x1000-0x9e000: 643072 bytes");

  std::vector<std::string> totals =
      Match(lines.back(),
            R"(memtest: PASS: tested (\d+) bytes, skipped (\d+) bytes of runtime pages, 0 mismatches)");
  ASSERT_EQ(totals.size(), 2u);
  uint64_t tested = std::stoull(totals[0]);
  uint64_t skipped = std::stoull(totals[1]);
  EXPECT_EQ(tested + skipped, ram);
  // Page 0 and the guest image, which ends below 8 MiB.
  EXPECT_LT(skipped, uint64_t{8} << 20);
}

TEST(GuestTest, MemtestCovers64MiB) {
  SKIP_WITHOUT_KVM();
  ProcessResult result = RunGuest("memtest", {"--mem", "64"}, 20s);
  CheckMemtest(result, 64, 2);
}

// 3200 MiB puts 128 MiB above 4 GiB, past the MMIO hole.
TEST(GuestTest, MemtestCoversRamAbove4GiB) {
  SKIP_WITHOUT_KVM();
  ProcessResult result = RunGuest("memtest", {"--mem", "3200"}, 60s);
  CheckMemtest(result, 3200, 3);
  EXPECT_THAT(result.standard_output,
              HasSubstr("memtest: range 0x100000000-0x108000000: 134217728 bytes\n"));
}

TEST(GuestTest, TimerCountsInterrupts) {
  SKIP_WITHOUT_KVM();
  ProcessResult result = RunGuest("timer", {"--mem", "64"}, 15s);
  ExpectExitedWith(result, 0);
  std::vector<std::string> lines = SplitLines(result.standard_output);
  ASSERT_EQ(lines.size(), 2u) << result.Describe();
  std::vector<std::string> frequency =
      Match(lines[0], R"(timer: LAPIC timer at 1000 Hz, calibrated to (\d+) Hz against kvmclock)");
  ASSERT_EQ(frequency.size(), 1u);
  EXPECT_GT(std::stoull(frequency[0]), 0u);
  std::vector<std::string> elapsed = Match(
      lines[1],
      R"(timer: PASS: 200 interrupts in (\d+) ms \(100 while spinning in ring 3, 100 while halted\))");
  ASSERT_EQ(elapsed.size(), 1u);
  // The guest itself fails below 180 ms (90% of 200 ms) and above 3 s.
  EXPECT_GE(std::stoull(elapsed[0]), 180u);
  EXPECT_LE(std::stoull(elapsed[0]), 3000u);
}

std::string SmpOutput(int cpus) {
  std::string out = "smp: " + std::to_string(cpus) + " CPUs in the MP table\n";
  for (int cpu = 0; cpu < cpus; ++cpu) {
    out += "smp: cpu " + std::to_string(cpu) + ": counted and took timer interrupts\n";
  }
  return out + "smp: PASS: " + std::to_string(cpus) + " of " + std::to_string(cpus) +
         " CPUs ran ring-3 code\n";
}

TEST(GuestTest, SmpRunsTwoCpus) {
  SKIP_WITHOUT_KVM();
  ProcessResult result = RunGuest("smp", {"--mem", "64", "--cpus", "2"}, 20s);
  ExpectExitedWith(result, 0);
  EXPECT_EQ(result.standard_output, SmpOutput(2));
}

TEST(GuestTest, SmpRunsFourCpus) {
  SKIP_WITHOUT_KVM();
  ProcessResult result = RunGuest("smp", {"--mem", "64", "--cpus", "4"}, 20s);
  ExpectExitedWith(result, 0);
  EXPECT_EQ(result.standard_output, SmpOutput(4));
}

TEST(GuestTest, ResetEndsVmWithStatusZero) {
  SKIP_WITHOUT_KVM();
  ProcessResult result = RunGuest("reset", {"--mem", "64"}, 10s);
  ExpectExitedWith(result, 0);
  EXPECT_EQ(result.standard_output, "reset: resetting through the i8042 controller\n");
  EXPECT_THAT(result.standard_error, HasSubstr("guest reset the machine"));
}

// The probe exits 0 where SYSCALL reaches CPL0 (hardware virtualization) and
// 1 where it lands at CPL3 (kvm_pvm).
TEST(GuestTest, SyscallProbeReportsPrivilegeLevel) {
  SKIP_WITHOUT_KVM();
  std::string module = LoadedKvmModule();
  if (module.empty()) GTEST_SKIP() << "skipped: no kvm_pvm, kvm_intel or kvm_amd module loaded";
  int expected = module == "kvm_pvm" ? 1 : 0;
  ProcessResult result = RunGuest("syscall_probe", {"--mem", "16"}, 10s);
  ExpectExitedWith(result, expected);
  EXPECT_EQ(result.standard_output, "");
  RecordProperty("probe_milliseconds", static_cast<int>(result.elapsed.count()));
}

struct CounterLine {
  uint64_t ticks;
  uint64_t value;
};

constexpr size_t kCounterLinesPerCpu = 3;

// The counter guest's progress lines, per CPU. A line not yet ended by
// '\n' is left out, because the stop can cut it.
std::array<std::vector<CounterLine>, 2> ParseCounterLines(const std::string& output) {
  std::array<std::vector<CounterLine>, 2> progress;
  std::vector<std::string> lines = SplitLines(output);
  if (!output.ends_with('\n') && !lines.empty()) lines.pop_back();
  static const std::regex kPattern(R"(counter: cpu ([01]) tick (\d+) value (\d+))");
  for (const std::string& line : lines) {
    std::smatch fields;
    if (!std::regex_match(line, fields, kPattern)) continue;
    progress[std::stoi(fields[1])].push_back({std::stoull(fields[2]), std::stoull(fields[3])});
  }
  return progress;
}

// Stops the guest by SIGTERM once both CPUs printed kCounterLinesPerCpu
// lines, so a slow or loaded host only makes the test take longer.
TEST(GuestTest, CounterCountsOnTwoCpusUntilStopped) {
  SKIP_WITHOUT_KVM();
  std::vector<std::string> arguments = {"--kernel", GuestPath("counter"), "--mem", "64",
                                        "--cpus", "2", "--cmdline", "counter.every=10"};
  auto enough_lines = [](const std::string& output) {
    std::array<std::vector<CounterLine>, 2> progress = ParseCounterLines(output);
    return progress[0].size() >= kCounterLinesPerCpu && progress[1].size() >= kCounterLinesPerCpu;
  };
  ProcessResult result = RunForkvmm(arguments, {.timeout = 30s, .terminate_when = enough_lines});
  ASSERT_FALSE(result.timed_out) << result.Describe();
  ASSERT_TRUE(result.exited) << result.Describe();
  // forkvmm reports a stop by SIGTERM as 128 + 15.
  EXPECT_EQ(result.exit_code, 143) << result.Describe();

  std::vector<std::string> lines = SplitLines(result.standard_output);
  ASSERT_GE(lines.size(), 2u) << result.Describe();
  EXPECT_EQ(lines[0],
            "counter: cpu 0 increments the word at 0x800000, printing every 10 ticks at 100 Hz");
  EXPECT_EQ(lines[1],
            "counter: cpu 1 increments the word at 0x801000, printing every 10 ticks at 100 Hz");
  std::array<std::vector<CounterLine>, 2> progress = ParseCounterLines(result.standard_output);
  for (int cpu = 0; cpu < 2; ++cpu) {
    SCOPED_TRACE("cpu " + std::to_string(cpu));
    ASSERT_GE(progress[cpu].size(), kCounterLinesPerCpu) << result.Describe();
    for (size_t i = 1; i < progress[cpu].size(); ++i) {
      EXPECT_GT(progress[cpu][i].ticks, progress[cpu][i - 1].ticks);
      EXPECT_GT(progress[cpu][i].value, progress[cpu][i - 1].value);
    }
  }
}

}  // namespace
}  // namespace forkvmm::integration
