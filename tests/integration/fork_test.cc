// Forks running and paused test guests through the real forkvmm CLI. The
// tests check what a child inherits and what stays apart: guest memory,
// timer interrupts, both vCPUs, a virtio-blk disk on a frozen qcow2 layer,
// and console output at the fork. Bad fork requests must fail with one
// line and leave the parent running.
//
// The guests are fork_probe (counters, memory and disk commands on the
// serial port) and lines (deterministic numbered lines) from tests/guests.
// Each test boots its VMs detached in a runtime directory of its own, kills
// them through `forkvmm kill` when it ends, and draws every wait from a time
// budget it sets in its first line.
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "tests/integration/test_support.h"

namespace forkvmm::integration {
namespace {

using namespace std::chrono_literals;
using ::testing::ContainsRegex;
using ::testing::HasSubstr;
using ::testing::Not;
using Clock = std::chrono::steady_clock;
using nlohmann::json;

constexpr char kReady[] = "fork_probe: ready\n";
// The uid and gid of "nobody" on Linux distributions.
constexpr uid_t kNobody = 65534;
// How often the waits look at logs and VM states.
constexpr auto kPollInterval = 20ms;

// One "fork_probe: cpu <i> line <n> tick <t> value <v>" report.
struct Report {
  unsigned cpu = 0;
  uint64_t line = 0;
  uint64_t tick = 0;
  uint64_t value = 0;
};

// The complete lines of `text`: a last line without its newline is left
// out, since the guest may still be writing it.
std::vector<std::string> CompleteLines(const std::string& text) {
  size_t end = text.rfind('\n');
  if (end == std::string::npos) return {};
  return SplitLines(text.substr(0, end + 1));
}

// The reports of CPU `cpu` in console output `text`, in order.
std::vector<Report> ParseReports(const std::string& text, unsigned cpu) {
  static const std::regex kPattern(R"(fork_probe: cpu (\d+) line (\d+) tick (\d+) value (\d+))");
  std::vector<Report> reports;
  for (const std::string& line : CompleteLines(text)) {
    std::smatch match;
    if (!std::regex_match(line, match, kPattern)) continue;
    Report report{static_cast<unsigned>(std::stoul(match[1])), std::stoull(match[2]),
                  std::stoull(match[3]), std::stoull(match[4])};
    if (report.cpu == cpu) reports.push_back(report);
  }
  return reports;
}

// Checks that `reports` continue one another: line numbers rise by one,
// ticks and counter values strictly rise.
void ExpectContinuous(const std::vector<Report>& reports, const std::string& who) {
  for (size_t i = 1; i < reports.size(); ++i) {
    SCOPED_TRACE(who + ", report " + std::to_string(i));
    EXPECT_EQ(reports[i].line, reports[i - 1].line + 1);
    EXPECT_GT(reports[i].tick, reports[i - 1].tick);
    EXPECT_GT(reports[i].value, reports[i - 1].value);
  }
}

std::optional<Report> LastReport(const std::string& text, unsigned cpu) {
  std::vector<Report> reports = ParseReports(text, cpu);
  if (reports.empty()) return std::nullopt;
  return reports.back();
}

// The text of numbered line `number` of the lines guest, newline included.
std::string NumberedLine(uint64_t number) {
  char line[64];
  std::snprintf(line, sizeof(line), "lines: %06llu the quick brown fox\n",
                static_cast<unsigned long long>(number));
  return line;
}

// Checks the lines guest's output `text`: its header `header`, then
// numbered lines from 1 without a gap or a repeat (a last partial line is
// not counted). Returns how many numbered lines it contains.
uint64_t ExpectNumberedLines(const std::string& text, const std::string& header,
                             const std::string& who) {
  std::vector<std::string> lines = CompleteLines(text);
  EXPECT_FALSE(lines.empty()) << who << " printed nothing";
  if (lines.empty()) return 0;
  EXPECT_EQ(lines[0], header) << who;
  for (size_t i = 1; i < lines.size(); ++i) {
    if (lines[i] + "\n" != NumberedLine(i)) {
      ADD_FAILURE() << who << ": line " << i << " is \"" << lines[i] << "\", expected \""
                    << NumberedLine(i).substr(0, NumberedLine(i).size() - 1) << "\"";
      return i - 1;
    }
  }
  return lines.size() - 1;
}

// Whether `pid` is gone or a zombie, i.e. it has exited.
bool ProcessExited(pid_t pid) {
  if (kill(pid, 0) != 0 && errno == ESRCH) return true;
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(stat, line)) return true;
  size_t close = line.rfind(')');
  return close != std::string::npos && close + 2 < line.size() && line[close + 2] == 'Z';
}

// File names in `directory`, sorted.
std::vector<std::string> ListDirectory(const std::string& directory) {
  std::vector<std::string> names;
  std::error_code error;
  for (const auto& entry : std::filesystem::directory_iterator(directory, error)) {
    names.push_back(entry.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  return names;
}

// The first byte offset where `a` and `b` differ, for failure messages.
std::string DescribeDifference(const std::string& a, const std::string& b) {
  size_t common = std::min(a.size(), b.size());
  size_t at = 0;
  while (at < common && a[at] == b[at]) ++at;
  return "sizes " + std::to_string(a.size()) + " and " + std::to_string(b.size()) +
         ", first difference at byte " + std::to_string(at);
}

std::optional<std::string> FindProgram(const std::string& name) {
  for (const char* directory : {"/usr/bin", "/usr/local/bin", "/bin", "/usr/sbin"}) {
    std::string path = std::string(directory) + "/" + name;
    if (access(path.c_str(), X_OK) == 0) return path;
  }
  return std::nullopt;
}

struct Child {
  std::string id;
  std::string name;
  pid_t pid = 0;
};

struct ForkReply {
  std::vector<Child> children;
  json timing;
  std::chrono::milliseconds elapsed{0};
};

// A runtime directory and a log directory of the test's own, the VMs in
// them, and the time budget every wait draws from.
class ForkTest : public ::testing::Test {
 protected:
  void SetUp() override {
    SKIP_WITHOUT_KVM();
    runtime_ = directory_.path() + "/runtime";
    logs_ = directory_.path() + "/logs";
    sanitizer_logs_ = directory_.path() + "/sanitizer";
    ASSERT_EQ(mkdir(runtime_.c_str(), 0700), 0) << std::strerror(errno);
    ASSERT_EQ(mkdir(logs_.c_str(), 0700), 0) << std::strerror(errno);
    ASSERT_EQ(mkdir(sanitizer_logs_.c_str(), 0700), 0) << std::strerror(errno);
  }

  void TearDown() override {
    if (runtime_given_away_ && chown(runtime_.c_str(), 0, 0) != 0) {
      ADD_FAILURE() << "giving " << runtime_ << " back to root failed: " << std::strerror(errno);
    }
    for (const std::string& path : restore_writable_) chmod(path.c_str(), 0700);
    KillAll();
    for (auto it = mounts_.rbegin(); it != mounts_.rend(); ++it) {
      if (umount2(it->c_str(), 0) != 0) umount2(it->c_str(), MNT_DETACH);
    }
    if (sanitizer_logs_.empty()) return;
    for (const std::string& name : ListDirectory(sanitizer_logs_)) {
      ADD_FAILURE() << "a forkvmm process wrote sanitizer report " << name << ":\n"
                    << ReadFile(sanitizer_logs_ + "/" + name).substr(0, 8000);
    }
  }

  // The environment of every forkvmm process the test starts. Sanitizer
  // reports go to files in sanitizer_logs_, which TearDown checks, because
  // a detached VM's stderr is a log that is removed with the VM. Builds
  // without sanitizers ignore these variables.
  std::vector<std::string> Environment() const {
    std::vector<std::string> environment;
    for (const char* name : {"ASAN_OPTIONS", "UBSAN_OPTIONS"}) {
      const char* inherited = std::getenv(name);
      std::string options = inherited != nullptr ? inherited : "";
      if (!options.empty()) options += ":";
      // The last log_path in the options wins, and each process appends
      // its pid to the name.
      options += "log_path=" + sanitizer_logs_ + "/" + name;
      environment.push_back(std::string(name) + "=" + options);
    }
    return environment;
  }

  // Sets how long the whole test may take, scaled by ScaledTimeout. Every
  // wait and every command fails once the budget is spent.
  void SetBudget(std::chrono::seconds budget) {
    deadline_ = Clock::now() + ScaledTimeout(budget);
  }

  std::chrono::milliseconds Remaining() const {
    return std::max(0ms, std::chrono::duration_cast<std::chrono::milliseconds>(deadline_ -
                                                                               Clock::now()));
  }

  // Runs `forkvmm <arguments>`, bounded by the budget and by 15 s (scaled).
  ProcessResult Forkvmm(std::vector<std::string> arguments,
                        const std::vector<std::string>& prefix = {}) {
    std::vector<std::string> argv = prefix;
    argv.push_back(ForkvmmPath());
    argv.insert(argv.end(), arguments.begin(), arguments.end());
    auto timeout =
        std::clamp<std::chrono::milliseconds>(Remaining(), 1000ms, ScaledTimeout(15000ms));
    return RunProcess(argv,
                      {.timeout = timeout, .scale_timeout = false, .environment = Environment()});
  }

  // Boots `guest` detached with 64 MiB and returns its id, or "" after a
  // test failure. `prefix` runs before forkvmm (setpriv, for one).
  std::string Boot(const std::string& guest, const std::vector<std::string>& extra = {},
                   const std::vector<std::string>& prefix = {}) {
    std::vector<std::string> arguments = {"run",           "--detach",
                                          "--kernel",      GuestPath(guest),
                                          "--mem",         "64",
                                          "--runtime-dir", runtime_,
                                          "--serial-log",  logs_ + "/{id}.log"};
    arguments.insert(arguments.end(), extra.begin(), extra.end());
    ProcessResult result = Forkvmm(arguments, prefix);
    if (result.timed_out || !result.exited || result.exit_code != 0) {
      ADD_FAILURE() << "forkvmm run --detach failed: " << result.Describe();
      return "";
    }
    std::vector<std::string> lines = SplitLines(result.standard_output);
    if (lines.size() != 1 || lines[0].empty()) {
      ADD_FAILURE() << "expected one id from forkvmm run --detach: " << result.Describe();
      return "";
    }
    return lines[0];
  }

  // Boots fork_probe and waits for `reports` reports of CPU 0, which come
  // after its "ready" line. Returns the id, or "" after a test failure.
  std::string BootProbe(const std::vector<std::string>& extra = {}, uint64_t reports = 1,
                        const std::vector<std::string>& prefix = {}) {
    std::string id = Boot("fork_probe", extra, prefix);
    if (id.empty()) return id;
    if (!WaitForReports(id, 0, reports)) return "";
    return id;
  }

  // Runs `forkvmm fork <vm> --json` with each child's console in the log
  // directory. Fails the test unless it succeeds.
  ForkReply Fork(const std::string& vm, const std::vector<std::string>& extra = {}) {
    std::vector<std::string> arguments = {"fork",          vm, "--json", "--runtime-dir",
                                          runtime_,        "--serial-log",
                                          logs_ + "/{id}.log"};
    arguments.insert(arguments.end(), extra.begin(), extra.end());
    ProcessResult result = Forkvmm(arguments);
    ForkReply reply;
    reply.elapsed = result.elapsed;
    if (result.timed_out || !result.exited || result.exit_code != 0) {
      ADD_FAILURE() << "forkvmm fork " << vm << " failed: " << result.Describe();
      return reply;
    }
    json parsed = json::parse(result.standard_output, nullptr, false);
    if (parsed.is_discarded() || !parsed.contains("children")) {
      ADD_FAILURE() << "forkvmm fork --json printed no children: " << result.Describe();
      return reply;
    }
    for (const json& child : parsed["children"]) {
      reply.children.push_back({child.value("id", ""), child.value("name", ""),
                                child.value("pid", 0)});
    }
    reply.timing = parsed.value("timing", json::object());
    return reply;
  }

  // Forks `vm` into exactly one child and returns its id, or "".
  std::string ForkOne(const std::string& vm, const std::vector<std::string>& extra = {}) {
    ForkReply reply = Fork(vm, extra);
    if (reply.children.size() != 1) {
      ADD_FAILURE() << "expected one child of " << vm << ", got " << reply.children.size();
      return "";
    }
    return reply.children[0].id;
  }

  std::string LogPath(const std::string& id) const { return logs_ + "/" + id + ".log"; }

  // The VM's console output so far; "" if its log does not exist yet.
  std::string Log(const std::string& id) const {
    std::ifstream in(LogPath(id), std::ios::binary);
    std::ostringstream out;
    out << in.rdbuf();
    return out.str();
  }

  // Polls `done` until it returns true or the budget is spent; then fails
  // the test, naming `what` and describing VM `vm` if one is given.
  bool WaitUntil(const std::function<bool()>& done, const std::string& what,
                 const std::string& vm = "") {
    while (true) {
      if (done()) return true;
      if (Clock::now() >= deadline_) {
        ADD_FAILURE() << "the test's time budget ran out waiting for " << what
                      << (vm.empty() ? "" : "\n" + DescribeVm(vm));
        return false;
      }
      std::this_thread::sleep_for(kPollInterval);
    }
  }

  // Whether the VM is still registered, and the end of its console output,
  // for failure messages.
  std::string DescribeVm(const std::string& id) const {
    bool registered = access((runtime_ + "/" + id + "/vm.json").c_str(), F_OK) == 0;
    std::string log = Log(id);
    size_t tail = std::min<size_t>(log.size(), 400);
    return "VM " + id + (registered ? " is registered" : " is no longer registered") +
           "; the last " + std::to_string(tail) + " bytes of its console output:\n" +
           log.substr(log.size() - tail);
  }

  bool WaitForReports(const std::string& id, unsigned cpu, uint64_t count) {
    return WaitUntil([&] { return ParseReports(Log(id), cpu).size() >= count; },
                     std::to_string(count) + " reports of cpu " + std::to_string(cpu) +
                         " of VM " + id,
                     id);
  }

  // Waits until CPU `cpu` of `id` reports a line numbered above `line`.
  bool WaitForLineAfter(const std::string& id, unsigned cpu, uint64_t line) {
    return WaitUntil(
        [&] {
          std::optional<Report> last = LastReport(Log(id), cpu);
          return last && last->line > line;
        },
        "a report of cpu " + std::to_string(cpu) + " of VM " + id + " after line " +
            std::to_string(line),
        id);
  }

  // Connects to the VM's console socket. Returns the fd, or -1 after a
  // test failure.
  int ConnectConsole(const std::string& id) {
    std::string path = runtime_ + "/" + id + "/console.sock";
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    if (path.size() >= sizeof(address.sun_path)) {
      ADD_FAILURE() << "console socket path too long: " << path;
      return -1;
    }
    std::memcpy(address.sun_path, path.c_str(), path.size() + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0) {
      ADD_FAILURE() << "connecting to " << path << " failed: " << std::strerror(errno);
      if (fd >= 0) close(fd);
      return -1;
    }
    return fd;
  }

  // Sends `command` and a newline on console connection `fd`.
  bool SendLine(int fd, const std::string& id, const std::string& command) {
    std::string text = command + "\n";
    if (send(fd, text.data(), text.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(text.size())) {
      return true;
    }
    ADD_FAILURE() << "sending '" << command << "' to VM " << id << " failed";
    return false;
  }

  // Sends `command` to fork_probe's serial port and returns the first
  // complete response line (any line but a report) printed after it, or
  // "" after a test failure. The console connection stays open until the
  // response arrives: the VM drops a client that has gone away, together
  // with input it has not read yet.
  std::string Command(const std::string& id, const std::string& command) {
    int fd = ConnectConsole(id);
    if (fd < 0) return "";
    size_t start = Log(id).size();
    std::string response;
    if (SendLine(fd, id, command)) {
      WaitUntil([&] { return FindResponse(Log(id), start, response); },
                "VM " + id + " to answer '" + command + "'", id);
    }
    close(fd);
    return response;
  }

  // Finds the first complete non-report line that starts after byte
  // `start` of `log`, skipping the rest of a line cut at `start`.
  static bool FindResponse(const std::string& log, size_t start, std::string& response) {
    if (start > 0 && log[start - 1] != '\n') {
      start = log.find('\n', start);
      if (start == std::string::npos) return false;
      ++start;
    }
    for (const std::string& line : CompleteLines(log.substr(start))) {
      if (line.starts_with("fork_probe: cpu ")) continue;
      response = line;
      return true;
    }
    return false;
  }

  // `forkvmm ls --json`, or an empty array after a test failure.
  json List() {
    ProcessResult result = Forkvmm({"ls", "--json", "--runtime-dir", runtime_});
    if (!result.exited || result.exit_code != 0) {
      ADD_FAILURE() << "forkvmm ls failed: " << result.Describe();
      return json::array();
    }
    json list = json::parse(result.standard_output, nullptr, false);
    if (list.is_discarded() || !list.is_array()) {
      ADD_FAILURE() << "forkvmm ls --json printed no array: " << result.standard_output;
      return json::array();
    }
    return list;
  }

  // The VM's entry in `forkvmm ls --json`, or an empty object.
  json Entry(const std::string& id) {
    for (const json& vm : List()) {
      if (vm.value("id", "") == id) return vm;
    }
    return json::object();
  }

  std::string State(const std::string& id) { return Entry(id).value("state", "(not listed)"); }

  // Runs `forkvmm <command> <id>` (pause, resume, kill) and expects success
  // with no output.
  void Control(const std::string& command, const std::string& id) {
    ProcessResult result = Forkvmm({command, id, "--runtime-dir", runtime_});
    EXPECT_TRUE(result.exited) << "forkvmm " << command << " " << id << ": " << result.Describe();
    EXPECT_EQ(result.exit_code, 0) << "forkvmm " << command << " " << id << ": "
                                   << result.Describe();
    EXPECT_EQ(result.standard_output, "");
  }

  // Kills every VM still listed in the runtime directory.
  void KillAll() {
    if (runtime_.empty()) return;
    for (const json& vm : List()) {
      std::string id = vm.value("id", "");
      ProcessResult result =
          RunProcess({ForkvmmPath(), "kill", id, "--runtime-dir", runtime_, "--timeout", "5"},
                     {.timeout = 15s, .environment = Environment()});
      EXPECT_EQ(result.exit_code, 0) << "forkvmm kill " << id << ": " << result.Describe();
    }
  }

  // Creates an empty 64 MiB qcow2 image with `forkvmm img create`.
  void CreateImage(const std::string& path) {
    ProcessResult result = Forkvmm({"img", "create", "-q", "-f", "qcow2", path, "64M"});
    ASSERT_TRUE(result.exited) << result.Describe();
    ASSERT_EQ(result.exit_code, 0) << result.Describe();
  }

  TemporaryDirectory directory_;
  std::string runtime_;
  std::string logs_;
  std::string sanitizer_logs_;
  Clock::time_point deadline_ = Clock::now() + 30s;
  // Directories a test made read-only, made writable again by TearDown.
  std::vector<std::string> restore_writable_;
  // Whether the runtime directory belongs to kNobody, until TearDown gives
  // it back to root.
  bool runtime_given_away_ = false;
  // File systems a test mounted, unmounted by TearDown after the VMs stop.
  std::vector<std::string> mounts_;
};

// --- memory and counters ---

// The counter in guest memory carries on in the child from its value at the
// fork, and the parent keeps counting.
TEST_F(ForkTest, CounterContinuesInChildAndParent) {
  SetBudget(20s);
  std::string parent = BootProbe({"--cmdline", "fork_probe.every=5"}, 3);
  ASSERT_FALSE(parent.empty());
  std::optional<Report> before = LastReport(Log(parent), 0);
  ASSERT_TRUE(before.has_value());
  ASSERT_GT(before->value, 0u);

  std::string child = ForkOne(parent);
  ASSERT_FALSE(child.empty());
  ASSERT_TRUE(WaitForReports(child, 0, 3));
  ASSERT_TRUE(WaitForLineAfter(parent, 0, before->line + 2));

  std::vector<Report> child_reports = ParseReports(Log(child), 0);
  ExpectContinuous(child_reports, "child");

  // The child's first complete report follows a line the VM printed before
  // the fork (or was printing at the fork), and its counter and ticks start
  // from where that line left them.
  const Report first = child_reports.front();
  ASSERT_GT(first.line, before->line) << "the child repeated a report from before the fork";
  ASSERT_TRUE(WaitForLineAfter(parent, 0, first.line));
  std::vector<Report> parent_reports = ParseReports(Log(parent), 0);
  // The parent's reports run on from line 1 across the fork.
  ASSERT_EQ(parent_reports.front().line, 1u);
  ExpectContinuous(parent_reports, "parent");
  auto previous = std::find_if(parent_reports.begin(), parent_reports.end(),
                               [&](const Report& report) { return report.line == first.line - 1; });
  ASSERT_NE(previous, parent_reports.end()) << "the parent has no line " << first.line - 1;
  EXPECT_GE(first.value, previous->value);
  EXPECT_GE(first.tick, previous->tick + 5);
  EXPECT_GE(first.value, before->value);
}

// A word written after the fork by one VM is invisible to the other, and
// both still read the value written before the fork until they write.
TEST_F(ForkTest, MemoryWritesStayApart) {
  SetBudget(20s);
  std::string parent = BootProbe();
  ASSERT_FALSE(parent.empty());
  EXPECT_EQ(Command(parent, "mem write 0x1111111111111111"),
            "fork_probe: mem 0x802000 held 0x0000000000000000, now holds 0x1111111111111111");

  std::string child = ForkOne(parent);
  ASSERT_FALSE(child.empty());
  EXPECT_EQ(Command(parent, "mem write 0xaaaaaaaaaaaaaaaa"),
            "fork_probe: mem 0x802000 held 0x1111111111111111, now holds 0xaaaaaaaaaaaaaaaa");
  EXPECT_EQ(Command(child, "mem write 0xbbbbbbbbbbbbbbbb"),
            "fork_probe: mem 0x802000 held 0x1111111111111111, now holds 0xbbbbbbbbbbbbbbbb");
  EXPECT_EQ(Command(parent, "mem read"), "fork_probe: mem 0x802000 holds 0xaaaaaaaaaaaaaaaa");
  EXPECT_EQ(Command(child, "mem read"), "fork_probe: mem 0x802000 holds 0xbbbbbbbbbbbbbbbb");
}

// A command that the paused VM's UART had received, but the guest had not
// read yet, is in both VMs after a fork: each runs it once resumed.
TEST_F(ForkTest, QueuedConsoleInputReachesBoth) {
  SetBudget(20s);
  std::string parent = BootProbe();
  ASSERT_FALSE(parent.empty());
  EXPECT_EQ(Command(parent, "mem write 0x1234"),
            "fork_probe: mem 0x802000 held 0x0000000000000000, now holds 0x0000000000001234");
  Control("pause", parent);
  size_t at_pause = Log(parent).size();
  int console = ConnectConsole(parent);
  ASSERT_GE(console, 0);
  ASSERT_TRUE(SendLine(console, parent, "mem read"));
  // The VM's event loop reads the console socket, ready since before the
  // fork command connected, before it reaches that command.
  std::string child = ForkOne(parent);
  ASSERT_FALSE(child.empty());

  Control("resume", child);
  Control("resume", parent);
  const std::string kExpected = "fork_probe: mem 0x802000 holds 0x0000000000001234";
  std::string child_response, parent_response;
  EXPECT_TRUE(WaitUntil([&] { return FindResponse(Log(child), 0, child_response); },
                        "the child to answer 'mem read'", child));
  EXPECT_TRUE(WaitUntil([&] { return FindResponse(Log(parent), at_pause, parent_response); },
                        "the parent to answer 'mem read'", parent));
  close(console);
  EXPECT_EQ(child_response, kExpected);
  EXPECT_EQ(parent_response, kExpected);
}

// --- disk ---

// After the fork, parent and child each write their own pattern to the same
// sector and read back their own. The frozen layer stays byte for byte as
// it was, and both overlays are valid qcow2 over it.
TEST_F(ForkTest, DiskWritesStayApartOverFrozenLayer) {
  SetBudget(40s);
  std::string disk_directory = directory_.path() + "/disk";
  ASSERT_EQ(mkdir(disk_directory.c_str(), 0700), 0);
  std::string base = disk_directory + "/base.qcow2";
  ASSERT_NO_FATAL_FAILURE(CreateImage(base));
  std::string parent = Boot("fork_probe", {"--disk", base + ",format=qcow2", "--cmdline",
                                           "fork_probe.disk=1"});
  ASSERT_FALSE(parent.empty());
  ASSERT_TRUE(WaitUntil([&] { return Log(parent).find(kReady) != std::string::npos; },
                        "fork_probe to start", parent));
  EXPECT_THAT(Log(parent), HasSubstr("fork_probe: disk 0 has 131072 sectors\n"));
  EXPECT_EQ(Command(parent, "disk write 7 0x1111111111111111"),
            "fork_probe: disk sector 7 held 0x0000000000000000, now holds 0x1111111111111111");

  std::string child = ForkOne(parent);
  ASSERT_FALSE(child.empty());
  std::string frozen = ReadFile(base);
  std::string parent_overlay = "base." + parent + "-1.qcow2";
  std::string child_overlay = "base." + child + ".qcow2";
  std::vector<std::string> expected_files = {"base.qcow2", parent_overlay, child_overlay};
  std::sort(expected_files.begin(), expected_files.end());
  EXPECT_EQ(ListDirectory(disk_directory), expected_files);

  EXPECT_EQ(Command(parent, "disk write 7 0xaaaaaaaaaaaaaaaa"),
            "fork_probe: disk sector 7 held 0x1111111111111111, now holds 0xaaaaaaaaaaaaaaaa");
  EXPECT_EQ(Command(child, "disk write 7 0xbbbbbbbbbbbbbbbb"),
            "fork_probe: disk sector 7 held 0x1111111111111111, now holds 0xbbbbbbbbbbbbbbbb");
  EXPECT_EQ(Command(parent, "disk read 7"), "fork_probe: disk sector 7 holds 0xaaaaaaaaaaaaaaaa");
  EXPECT_EQ(Command(child, "disk read 7"), "fork_probe: disk sector 7 holds 0xbbbbbbbbbbbbbbbb");
  Control("kill", child);
  Control("kill", parent);

  std::string frozen_after = ReadFile(base);
  EXPECT_TRUE(frozen_after == frozen) << "the frozen layer changed: "
                                      << DescribeDifference(frozen, frozen_after);
  EXPECT_EQ(ListDirectory(disk_directory), expected_files);

  std::optional<std::string> qemu_img = FindProgram("qemu-img");
  std::optional<std::string> qemu_io = FindProgram("qemu-io");
  if (!qemu_img || !qemu_io) {
    GTEST_SKIP() << "skipped: qemu-img or qemu-io not found; the overlays were not checked "
                    "with them (install qemu-utils)";
  }
  // Sector 7 is bytes 3584 to 4095; the pattern bytes repeat in each layer.
  const std::pair<std::string, std::string> kLayers[] = {
      {"base.qcow2", "0x11"}, {parent_overlay, "0xaa"}, {child_overlay, "0xbb"}};
  for (const auto& [name, pattern] : kLayers) {
    SCOPED_TRACE(name);
    std::string path = disk_directory + "/" + name;
    ProcessResult check = RunProcess({*qemu_img, "check", "-f", "qcow2", path}, {.timeout = 20s});
    EXPECT_EQ(check.exit_code, 0) << check.Describe();
    ProcessResult read = RunProcess(
        {*qemu_io, "-f", "qcow2", "-r", "-c", "read -P " + pattern + " 3584 512", path},
        {.timeout = 20s});
    EXPECT_EQ(read.exit_code, 0) << read.Describe();
    EXPECT_THAT(read.standard_output, HasSubstr("read 512/512 bytes at offset 3584"));
    EXPECT_THAT(read.standard_output, Not(HasSubstr("verification failed")));
  }
  for (const std::string& overlay : {parent_overlay, child_overlay}) {
    ProcessResult info = RunProcess(
        {*qemu_img, "info", "--output=json", disk_directory + "/" + overlay}, {.timeout = 20s});
    ASSERT_EQ(info.exit_code, 0) << info.Describe();
    json parsed = json::parse(info.standard_output, nullptr, false);
    EXPECT_EQ(parsed.value("backing-filename", ""), "base.qcow2") << info.standard_output;
  }
}

// --- timers and vCPUs ---

// A vCPU that spins in ring 3 when the fork comes keeps taking LAPIC timer
// interrupts in both VMs.
TEST_F(ForkTest, TimerInterruptsContinueInBoth) {
  SetBudget(25s);
  std::string parent = BootProbe({"--cmdline", "fork_probe.every=10 fork_probe.busy=1"}, 2);
  ASSERT_FALSE(parent.empty());
  std::string child = ForkOne(parent);
  ASSERT_FALSE(child.empty());
  Clock::time_point forked = Clock::now();
  ASSERT_TRUE(WaitForReports(child, 0, 1));
  Report child_start = ParseReports(Log(child), 0).front();
  Report parent_start = *LastReport(Log(parent), 0);

  // Ten more reports are at least 100 more interrupts, a second at 100 Hz.
  ASSERT_TRUE(WaitForLineAfter(child, 0, child_start.line + 9));
  ASSERT_TRUE(WaitForLineAfter(parent, 0, parent_start.line + 9));
  double seconds = std::chrono::duration<double>(Clock::now() - forked).count();
  for (const auto& [who, id, start] :
       {std::tuple{"child", child, child_start}, std::tuple{"parent", parent, parent_start}}) {
    Report last = *LastReport(Log(id), 0);
    EXPECT_GE(last.tick - start.tick, 100u) << who;
    std::printf("[ fork     ] %s took %llu timer interrupts in %.2f s after the fork\n", who,
                static_cast<unsigned long long>(last.tick - start.tick), seconds);
    ExpectContinuous(ParseReports(Log(id), 0), who);
  }
}

// Both vCPUs of a 2-vCPU VM make progress in the parent and the child.
TEST_F(ForkTest, BothVcpusRunAfterFork) {
  SetBudget(30s);
  std::string parent = BootProbe({"--cpus", "2", "--cmdline", "fork_probe.every=5"}, 2);
  ASSERT_FALSE(parent.empty());
  ASSERT_TRUE(WaitForReports(parent, 1, 2));
  std::string before_fork = Log(parent);
  std::string child = ForkOne(parent);
  ASSERT_FALSE(child.empty());

  for (unsigned cpu : {0u, 1u}) {
    SCOPED_TRACE("cpu " + std::to_string(cpu));
    Report before = *LastReport(before_fork, cpu);
    ASSERT_TRUE(WaitForReports(child, cpu, 3));
    ASSERT_TRUE(WaitForLineAfter(parent, cpu, before.line + 3));
    std::vector<Report> child_reports = ParseReports(Log(child), cpu);
    ExpectContinuous(child_reports, "child");
    ExpectContinuous(ParseReports(Log(parent), cpu), "parent");
    EXPECT_GT(child_reports.front().line, before.line);
    EXPECT_GE(child_reports.front().value, before.value);
    EXPECT_GT(child_reports.back().value, child_reports.front().value);
  }
}

// --- many VMs ---

// A child, its child and that one's child: all four VMs run and report, and
// each lists its parent.
TEST_F(ForkTest, ThreeGenerationsAllRun) {
  SetBudget(40s);
  std::vector<std::string> generations = {BootProbe({"--cmdline", "fork_probe.every=5"}, 2)};
  ASSERT_FALSE(generations[0].empty());
  std::vector<uint64_t> lines_at_fork;
  for (int generation = 1; generation <= 3; ++generation) {
    const std::string& parent = generations.back();
    ASSERT_TRUE(WaitForReports(parent, 0, 1));
    lines_at_fork.push_back(LastReport(Log(parent), 0)->line);
    std::string child = ForkOne(parent);
    ASSERT_FALSE(child.empty());
    generations.push_back(child);
  }

  for (size_t i = 0; i < generations.size(); ++i) {
    SCOPED_TRACE("generation " + std::to_string(i));
    json entry = Entry(generations[i]);
    EXPECT_EQ(entry.value("state", ""), "running");
    EXPECT_EQ(entry.value("parent_id", "?"), i == 0 ? "" : generations[i - 1]);
    // Two reports after the last fork.
    uint64_t seen = LastReport(Log(generations[i]), 0).value_or(Report{}).line;
    ASSERT_TRUE(WaitForLineAfter(generations[i], 0, seen + 1));
    std::vector<Report> reports = ParseReports(Log(generations[i]), 0);
    ExpectContinuous(reports, "generation " + std::to_string(i));
    if (i > 0) {
      EXPECT_GT(reports.front().line, lines_at_fork[i - 1]);
    }
  }
}

// `fork --count 20`: twenty children run, report and are killed cleanly.
TEST_F(ForkTest, TwentyChildrenRunAndStop) {
  SetBudget(60s);
  std::string parent = BootProbe({"--cmdline", "fork_probe.every=10"}, 1);
  ASSERT_FALSE(parent.empty());
  uint64_t line_at_fork = LastReport(Log(parent), 0)->line;

  Clock::time_point start = Clock::now();
  ForkReply reply = Fork(parent, {"--count", "20", "--name", "kid"});
  ASSERT_EQ(reply.children.size(), 20u);
  std::set<std::string> ids;
  std::set<pid_t> pids;
  for (size_t i = 0; i < reply.children.size(); ++i) {
    EXPECT_EQ(reply.children[i].name, "kid-" + std::to_string(i + 1));
    ids.insert(reply.children[i].id);
    pids.insert(reply.children[i].pid);
  }
  EXPECT_EQ(ids.size(), 20u);
  EXPECT_EQ(pids.size(), 20u);

  for (const Child& child : reply.children) ASSERT_TRUE(WaitForReports(child.id, 0, 1));
  Clock::time_point all_reported = Clock::now();
  json list = List();
  EXPECT_EQ(list.size(), 21u);
  for (const json& vm : list) {
    if (vm.value("id", "") == parent) continue;
    EXPECT_EQ(vm.value("parent_id", ""), parent) << vm.dump();
    EXPECT_EQ(vm.value("state", ""), "running") << vm.dump();
  }
  for (const Child& child : reply.children) {
    EXPECT_GT(ParseReports(Log(child.id), 0).front().line, line_at_fork) << child.id;
  }

  for (const Child& child : reply.children) Control("kill", child.id);
  Clock::time_point killed = Clock::now();
  for (const Child& child : reply.children) {
    EXPECT_TRUE(ProcessExited(child.pid)) << "child " << child.id << " pid " << child.pid;
  }
  json remaining = List();
  ASSERT_EQ(remaining.size(), 1u) << remaining.dump();
  EXPECT_EQ(remaining[0].value("id", ""), parent);
  EXPECT_EQ(remaining[0].value("state", ""), "running");

  auto ms = [](Clock::duration duration) {
    return static_cast<long long>(
        std::chrono::duration_cast<std::chrono::milliseconds>(duration).count());
  };
  std::printf("[ fork     ] 20 children: fork command %lld ms (VMM: all ready after %.1f ms, "
              "parent held %.1f ms), all reported after %lld ms, killed in %lld ms, total %lld "
              "ms\n",
              static_cast<long long>(reply.elapsed.count()),
              reply.timing.value("all_ready_ms", -1.0), reply.timing.value("parent_held_ms", -1.0),
              ms(all_reported - start), ms(killed - all_reported), ms(killed - start));
  RecordProperty("fork_20_total_ms", static_cast<int>(ms(killed - start)));
}

// --- console ---

// Waits until `id`'s log contains at least `bytes` bytes.
#define WAIT_FOR_LOG_SIZE(id, bytes)                                                        \
  ASSERT_TRUE(WaitUntil([&] { return Log(id).size() >= (bytes); },                         \
                        "VM " + (id) + " to print " + std::to_string(bytes) + " bytes", id))

// The device the lines guest prints through.
struct ConsoleDevice {
  const char* name;          // test name suffix
  const char* command_line;  // the guest's --cmdline
  const char* header;        // the guest's first line
};

const ConsoleDevice kConsoleDevices[] = {
    {"DebugDevice", "lines.uart=0",
     "lines: numbered lines, 4 per tick at 100 Hz, through the debug device"},
    {"Uart", "lines.uart=1", "lines: numbered lines, 4 per tick at 100 Hz, through the UART"},
};

void PrintTo(const ConsoleDevice& device, std::ostream* out) { *out << device.name; }

// The console seam, once for output through the debug device's MMIO page
// and once through the 16550 UART's I/O ports.
class ForkSeamTest : public ForkTest, public ::testing::WithParamInterface<ConsoleDevice> {
 protected:
  std::string BootLines() { return Boot("lines", {"--cmdline", GetParam().command_line}); }

  uint64_t ExpectNumberedLines(const std::string& text, const std::string& who) {
    return integration::ExpectNumberedLines(text, GetParam().header, who);
  }
};

INSTANTIATE_TEST_SUITE_P(Console, ForkSeamTest, ::testing::ValuesIn(kConsoleDevices),
                         [](const ::testing::TestParamInfo<ConsoleDevice>& param_info) {
                           return std::string(param_info.param.name);
                         });

// A child's console output continues its parent's at the byte where the
// fork happened: nothing from before the fork is repeated and, in the
// parent, nothing is lost. The exact byte of a running fork is not
// visible from outside, so a child that lost a few bytes right after it
// would still pass here. The paused fork below checks that byte.
TEST_P(ForkSeamTest, RunningFork) {
  SetBudget(30s);
  std::string parent = BootLines();
  ASSERT_FALSE(parent.empty());
  WAIT_FOR_LOG_SIZE(parent, size_t{2000});
  // Three forks land at different places in the output, often inside a line.
  for (int round = 0; round < 3; ++round) {
    SCOPED_TRACE("fork " + std::to_string(round + 1));
    size_t before = Log(parent).size();
    std::string child = ForkOne(parent);
    ASSERT_FALSE(child.empty());
    size_t after = Log(parent).size();
    WAIT_FOR_LOG_SIZE(child, size_t{1500});
    Control("kill", child);
    std::string child_log = Log(child);
    ASSERT_NE(child_log.rfind('\n'), std::string::npos);
    child_log.resize(child_log.rfind('\n') + 1);
    WAIT_FOR_LOG_SIZE(parent, after + child_log.size() + 100);

    std::string parent_log = Log(parent);
    size_t seam = parent_log.find(child_log);
    ASSERT_NE(seam, std::string::npos) << "the child's output is not a stretch of the parent's:\n"
                                       << child_log.substr(0, 200);
    EXPECT_GE(seam, before) << "the child repeated output from before the fork";
    EXPECT_LE(seam, after) << "the child lost output from after the fork";
    ExpectNumberedLines(parent_log, "parent");
  }
}

// Forking a paused VM: the child's output starts exactly at the byte where
// the parent's stopped, and both stay silent until resumed.
TEST_P(ForkSeamTest, PausedFork) {
  SetBudget(30s);
  std::string parent = BootLines();
  ASSERT_FALSE(parent.empty());
  WAIT_FOR_LOG_SIZE(parent, size_t{2000});
  Control("pause", parent);
  std::string at_pause = Log(parent);
  std::string child = ForkOne(parent, {"--paused"});
  ASSERT_FALSE(child.empty());
  std::this_thread::sleep_for(300ms);
  EXPECT_EQ(Log(child), "");
  EXPECT_EQ(Log(parent), at_pause);

  Control("resume", child);
  WAIT_FOR_LOG_SIZE(child, size_t{1500});
  EXPECT_EQ(Log(parent), at_pause) << "the paused parent printed";
  Control("resume", parent);
  Control("kill", child);
  std::string child_log = Log(child);
  WAIT_FOR_LOG_SIZE(parent, at_pause.size() + child_log.size() + 100);
  std::string parent_log = Log(parent);
  EXPECT_TRUE(parent_log.compare(at_pause.size(), child_log.size(), child_log) == 0)
      << "the child's output does not continue the parent's at byte " << at_pause.size()
      << ":\nparent: " << parent_log.substr(at_pause.size(), 100)
      << "\nchild: " << child_log.substr(0, 100);
  ExpectNumberedLines(parent_log, "parent");
  ExpectNumberedLines(at_pause + child_log, "parent before the fork, then the child");
}

// --- cold fork ---

// A cold fork: a paused VM forked without --paused. Both are listed as
// paused and print nothing until resumed; then each continues from the same
// counters, the child while the parent is still paused.
TEST_F(ForkTest, PausedForkStaysPausedUntilResumed) {
  SetBudget(30s);
  std::string parent = BootProbe({"--cmdline", "fork_probe.every=5"}, 2);
  ASSERT_FALSE(parent.empty());
  Control("pause", parent);
  EXPECT_EQ(State(parent), "paused");
  std::string at_pause = Log(parent);
  Report before = *LastReport(at_pause, 0);
  std::string child = ForkOne(parent);
  ASSERT_FALSE(child.empty());

  EXPECT_EQ(State(parent), "paused");
  EXPECT_EQ(State(child), "paused");
  std::this_thread::sleep_for(500ms);
  EXPECT_EQ(Log(parent), at_pause) << "the paused parent ran";
  EXPECT_EQ(Log(child), "") << "the paused child ran";

  Control("resume", child);
  EXPECT_EQ(State(child), "running");
  EXPECT_EQ(State(parent), "paused");
  ASSERT_TRUE(WaitForReports(child, 0, 2));
  EXPECT_EQ(Log(parent), at_pause) << "the parent ran while paused";
  // The parent's output up to the fork and the child's after it read as
  // one run of the guest.
  // The pause may cut a line, so only the joined text parses line by line.
  std::vector<Report> joined = ParseReports(at_pause + Log(child), 0);
  ASSERT_FALSE(joined.empty());
  EXPECT_EQ(joined.front().line, 1u);
  EXPECT_GT(joined.back().line, before.line + 1);
  ExpectContinuous(joined, "parent before the fork, then the child");
  EXPECT_GE(ParseReports(Log(child), 0).front().value, before.value);

  Control("resume", parent);
  EXPECT_EQ(State(parent), "running");
  ASSERT_TRUE(WaitForLineAfter(parent, 0, before.line + 1));
  std::vector<Report> parent_reports = ParseReports(Log(parent), 0);
  ExpectContinuous(parent_reports, "parent");
  EXPECT_GE(parent_reports.back().value, before.value);
}

// `fork --paused` of a running VM: the parent runs on, the child waits
// until resumed and then continues from the fork.
TEST_F(ForkTest, PausedFlagHoldsOnlyTheChild) {
  SetBudget(30s);
  std::string parent = BootProbe({"--cmdline", "fork_probe.every=5"}, 2);
  ASSERT_FALSE(parent.empty());
  Report before_fork = *LastReport(Log(parent), 0);
  std::string child = ForkOne(parent, {"--paused"});
  ASSERT_FALSE(child.empty());
  Report at_fork = *LastReport(Log(parent), 0);

  EXPECT_EQ(State(parent), "running");
  EXPECT_EQ(State(child), "paused");
  ASSERT_TRUE(WaitForLineAfter(parent, 0, at_fork.line + 2));
  EXPECT_EQ(Log(child), "") << "the paused child ran";

  Control("resume", child);
  EXPECT_EQ(State(child), "running");
  ASSERT_TRUE(WaitForReports(child, 0, 2));
  std::vector<Report> child_reports = ParseReports(Log(child), 0);
  ExpectContinuous(child_reports, "child");
  // The fork came after the parent's report `before_fork` and before
  // `at_fork`, and may have cut the line after that one.
  EXPECT_GT(child_reports.front().line, before_fork.line);
  EXPECT_LE(child_reports.front().line, at_fork.line + 2);
  EXPECT_GE(child_reports.front().value, before_fork.value);
}

// --- bad input ---

// A fork that must fail: one line on stderr, starting "forkvmm fork: ", a
// non-zero status, and the parent left running with no trace of a child.
class ForkRejectTest : public ForkTest {
 protected:
  void ExpectRejected(const std::vector<std::string>& arguments, const std::string& expected) {
    logs_before_ = ListDirectory(logs_);
    std::vector<std::string> all = {"fork"};
    all.insert(all.end(), arguments.begin(), arguments.end());
    all.insert(all.end(), {"--runtime-dir", runtime_, "--serial-log", logs_ + "/{id}.log"});
    ExpectOneLineError(Forkvmm(all), "forkvmm fork: ", expected);
  }

  // Checks that `result` failed with exactly one line on stderr, starting
  // with `prefix` and matching the regular expression `expected`.
  void ExpectOneLineError(const ProcessResult& result, const std::string& prefix,
                          const std::string& expected) {
    ASSERT_FALSE(result.timed_out) << result.Describe();
    ASSERT_TRUE(result.exited) << result.Describe();
    EXPECT_NE(result.exit_code, 0) << result.Describe();
    EXPECT_EQ(result.standard_output, "");
    std::vector<std::string> lines = SplitLines(result.standard_error);
    ASSERT_EQ(lines.size(), 1u) << "expected one line on stderr:\n" << result.standard_error;
    EXPECT_THAT(lines[0], ::testing::StartsWith(prefix));
    EXPECT_THAT(lines[0], ContainsRegex(expected));
  }

  // The parent is the only VM in the runtime directory, runs and keeps
  // counting, and no child left a console log behind.
  void ExpectParentUntouched(const std::string& parent) {
    json list = List();
    ASSERT_EQ(list.size(), 1u) << list.dump();
    EXPECT_EQ(list[0].value("id", ""), parent);
    EXPECT_EQ(list[0].value("state", ""), "running");
    EXPECT_EQ(ListDirectory(runtime_), std::vector<std::string>{parent});
    uint64_t line = LastReport(Log(parent), 0).value_or(Report{}).line;
    ASSERT_TRUE(WaitForLineAfter(parent, 0, line + 1));
    EXPECT_EQ(ListDirectory(logs_), logs_before_);
  }

  // The parent still writes to its top layer `top`, which the failed fork
  // must neither freeze nor replace: the disk records only `top`, a guest
  // write succeeds, and the write lands in that file.
  void ExpectParentDiskWritable(const std::string& parent, const std::string& top) {
    json record =
        json::parse(ReadFile(runtime_ + "/" + parent + "/vm.json"), nullptr, false);
    EXPECT_EQ(record.value("disks", std::vector<std::string>{}), std::vector<std::string>{top})
        << record.dump();
    std::string before = ReadFile(top);
    EXPECT_EQ(Command(parent, "disk write 7 0x5555555555555555"),
              "fork_probe: disk sector 7 held 0x0000000000000000, now holds 0x5555555555555555");
    EXPECT_TRUE(ReadFile(top) != before) << "the guest's write did not reach " << top;
  }

  // The prefix that runs forkvmm without the capabilities that let root
  // write where the mode bits forbid it; empty when not running as root.
  // nullopt when root cannot drop them.
  std::optional<std::vector<std::string>> WithoutDacOverride() {
    if (geteuid() != 0) return std::vector<std::string>{};
    std::optional<std::string> setpriv = FindProgram("setpriv");
    if (!setpriv) return std::nullopt;
    return std::vector<std::string>{*setpriv, "--bounding-set",
                                    "-dac_override,-dac_read_search,-fowner"};
  }

  // Mounts a tmpfs of `kib` KiB at `directory`, in a mount namespace of
  // this test process, so the mount ends with the process even if the test
  // crashes. The VMs booted afterwards share the namespace. Returns why it
  // failed, or "".
  std::string MountSmallTmpfs(const std::string& directory, unsigned kib) {
    static bool in_own_namespace = false;
    if (!in_own_namespace) {
      if (unshare(CLONE_NEWNS) != 0) {
        return std::string("unshare(CLONE_NEWNS): ") + std::strerror(errno);
      }
      // Without this, mounts would propagate back to the host's namespace.
      if (mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) {
        return std::string("making / private: ") + std::strerror(errno);
      }
      in_own_namespace = true;
    }
    std::string options = "size=" + std::to_string(kib) + "k,mode=0700";
    if (mount("tmpfs", directory.c_str(), "tmpfs", 0, options.c_str()) != 0) {
      return "mounting a tmpfs: " + std::string(std::strerror(errno));
    }
    mounts_.push_back(directory);
    return "";
  }

  // Fills the file system of `directory` until `keep_bytes` are left free,
  // with a file named "filler".
  void FillFileSystem(const std::string& directory, uint64_t keep_bytes) {
    struct statvfs stats {};
    ASSERT_EQ(statvfs(directory.c_str(), &stats), 0) << std::strerror(errno);
    uint64_t available = uint64_t{stats.f_bavail} * stats.f_frsize;
    ASSERT_GT(available, keep_bytes);
    std::ofstream filler(directory + "/filler", std::ios::binary);
    std::string block(4096, 'x');
    for (uint64_t left = available - keep_bytes; left > 0;) {
      size_t size = static_cast<size_t>(std::min<uint64_t>(left, block.size()));
      if (!filler.write(block.data(), static_cast<std::streamsize>(size))) break;
      left -= size;
    }
    filler.close();
  }

  // The console logs before the rejected fork.
  std::vector<std::string> logs_before_;
};

TEST_F(ForkRejectTest, UnknownId) {
  SetBudget(20s);
  std::string parent = BootProbe();
  ASSERT_FALSE(parent.empty());
  ExpectRejected({"no-such-vm"}, "no VM with id or name 'no-such-vm'");
  ExpectParentUntouched(parent);
}

// A VM stopped through `forkvmm kill`, and one whose process was killed
// with SIGKILL and left its runtime entry behind, are both "no VM".
TEST_F(ForkRejectTest, StoppedVm) {
  SetBudget(20s);
  std::string parent = BootProbe();
  ASSERT_FALSE(parent.empty());
  std::string stopped = Boot("fork_probe");
  ASSERT_FALSE(stopped.empty());
  Control("kill", stopped);
  ExpectRejected({stopped}, "no VM with id or name '" + stopped + "'");

  std::string died = Boot("fork_probe");
  ASSERT_FALSE(died.empty());
  pid_t pid = Entry(died).value("pid", 0);
  ASSERT_GT(pid, 0);
  // The VM process is this test's own: `forkvmm run --detach` started it.
  ASSERT_EQ(kill(pid, SIGKILL), 0) << std::strerror(errno);
  ASSERT_TRUE(WaitUntil([&] { return ProcessExited(pid); }, "VM " + died + " to die"));
  ExpectRejected({died}, "no VM with id or name '" + died + "'");
  ExpectParentUntouched(parent);
}

// Counts outside 1 to 256, or not integers, through the CLI and through
// the control socket.
TEST_F(ForkRejectTest, InvalidCounts) {
  SetBudget(30s);
  std::string parent = BootProbe();
  ASSERT_FALSE(parent.empty());
  for (const char* count : {"0", "257", "100000", "-1", "99999999999999999999", "2.5", "lots"}) {
    SCOPED_TRACE(std::string("--count ") + count);
    ExpectRejected({parent, "--count", count},
                   std::string("^forkvmm fork: invalid --count ") + count +
                       ": expected an integer from 1 to 256$");
  }
  const std::pair<const char*, const char*> kControlCases[] = {
      {R"({"count": 0})", "0"},       {R"({"count": 257})", "257"},
      {R"({"count": -1})", "-1"},     {R"({"count": 2.5})", "2\\.5"},
      {R"({"count": 1e30})", "1e\\+30"},
  };
  for (const auto& [arguments, shown] : kControlCases) {
    SCOPED_TRACE(std::string("qmp fork ") + arguments);
    ProcessResult result = Forkvmm({"qmp", parent, "fork", arguments, "--runtime-dir", runtime_});
    ExpectOneLineError(result, "forkvmm qmp: ",
                       std::string("^forkvmm qmp: VM ") + parent + ": invalid fork count " +
                           shown + ": expected an integer from 1 to 256$");
  }
  ExpectParentUntouched(parent);
}

// The parent cannot register its child in a runtime directory it may not
// write. Every forkvmm command resets the directory's mode to 0700, so the
// directory goes to another user instead: the fork command, as root, still
// reaches the parent, which runs without root's permission override.
TEST_F(ForkRejectTest, RuntimeDirectoryNotWritable) {
  SetBudget(20s);
  if (geteuid() != 0) {
    GTEST_SKIP() << "skipped: needs root to give the runtime directory to another user";
  }
  std::optional<std::vector<std::string>> prefix = WithoutDacOverride();
  if (!prefix) GTEST_SKIP() << "skipped: setpriv is not installed";
  std::string parent = BootProbe({}, 1, *prefix);
  ASSERT_FALSE(parent.empty());
  ASSERT_EQ(chown(runtime_.c_str(), kNobody, kNobody), 0) << std::strerror(errno);
  runtime_given_away_ = true;
  ExpectRejected({parent}, "mkdir " + runtime_ + "/[0-9a-f]+: Permission denied");
  ASSERT_EQ(chown(runtime_.c_str(), 0, 0), 0) << std::strerror(errno);
  runtime_given_away_ = false;
  ExpectParentUntouched(parent);
}

// The parent cannot create overlays next to a top layer in a directory it
// may not write. The directory is left as it was, and the parent goes on
// writing to its top layer.
TEST_F(ForkRejectTest, TopLayerDirectoryReadOnly) {
  SetBudget(20s);
  std::optional<std::vector<std::string>> prefix = WithoutDacOverride();
  if (!prefix) GTEST_SKIP() << "skipped: running as root and setpriv is not installed";
  std::string disk_directory = directory_.path() + "/disk";
  ASSERT_EQ(mkdir(disk_directory.c_str(), 0700), 0);
  std::string base = disk_directory + "/base.qcow2";
  ASSERT_NO_FATAL_FAILURE(CreateImage(base));
  std::string parent =
      BootProbe({"--disk", base + ",format=qcow2", "--cmdline", "fork_probe.disk=1"}, 1, *prefix);
  ASSERT_FALSE(parent.empty());
  std::string top_before = ReadFile(base);
  ASSERT_EQ(chmod(disk_directory.c_str(), 0500), 0) << std::strerror(errno);
  restore_writable_.push_back(disk_directory);

  ExpectRejected({parent}, "base\\." + parent + "-1\\.qcow2.*Permission denied");
  EXPECT_EQ(ListDirectory(disk_directory), std::vector<std::string>{"base.qcow2"});
  EXPECT_TRUE(ReadFile(base) == top_before) << "the failed fork changed the top layer";
  ExpectParentUntouched(parent);
  ExpectParentDiskWritable(parent, base);
}

// A file system too full for the overlays: the fork fails cleanly and no
// overlay is left behind. With room for one overlay, the parent's is
// created and the child's fails, so the parent's must be removed again.
TEST_F(ForkRejectTest, NoSpaceForOverlay) {
  SetBudget(30s);
  std::string disk_directory = directory_.path() + "/small";
  ASSERT_EQ(mkdir(disk_directory.c_str(), 0700), 0);
  if (std::string error = MountSmallTmpfs(disk_directory, 2048); !error.empty()) {
    GTEST_SKIP() << "skipped: " << error;
  }
  std::string base = disk_directory + "/base.qcow2";
  ASSERT_NO_FATAL_FAILURE(CreateImage(base));
  // What one overlay of `base` takes on this file system.
  std::string probe = disk_directory + "/probe.qcow2";
  ProcessResult created =
      Forkvmm({"img", "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", probe});
  ASSERT_EQ(created.exit_code, 0) << created.Describe();
  struct stat probe_stat {};
  ASSERT_EQ(stat(probe.c_str(), &probe_stat), 0) << std::strerror(errno);
  uint64_t overlay_bytes = uint64_t{static_cast<uint64_t>(probe_stat.st_blocks)} * 512;
  ASSERT_EQ(unlink(probe.c_str()), 0);
  ASSERT_GT(overlay_bytes, 0u);

  std::string parent =
      BootProbe({"--disk", base + ",format=qcow2", "--cmdline", "fork_probe.disk=1"});
  ASSERT_FALSE(parent.empty());
  ASSERT_NO_FATAL_FAILURE(FillFileSystem(disk_directory, overlay_bytes * 3 / 2));
  std::string top_before = ReadFile(base);
  const std::vector<std::string> kLeft = {"base.qcow2", "filler"};

  ExpectRejected({parent}, "base\\.[0-9a-f]+\\.qcow2.*No space left on device");
  EXPECT_EQ(ListDirectory(disk_directory), kLeft);
  EXPECT_TRUE(ReadFile(base) == top_before) << "the failed fork changed the top layer";
  ExpectParentUntouched(parent);

  ASSERT_EQ(truncate((disk_directory + "/filler").c_str(), 0), 0) << std::strerror(errno);
  ASSERT_NO_FATAL_FAILURE(FillFileSystem(disk_directory, overlay_bytes / 2));
  ExpectRejected({parent}, "base\\." + parent + "-1\\.qcow2.*No space left on device");
  EXPECT_EQ(ListDirectory(disk_directory), kLeft);
  EXPECT_TRUE(ReadFile(base) == top_before) << "the failed fork changed the top layer";
  ExpectParentUntouched(parent);

  ASSERT_EQ(unlink((disk_directory + "/filler").c_str()), 0) << std::strerror(errno);
  ExpectParentDiskWritable(parent, base);
}

// A --runtime-dir that cannot be created: the CLI fails before it reaches
// any VM.
TEST_F(ForkRejectTest, RuntimeDirectoryUnusable) {
  SetBudget(20s);
  std::string parent = BootProbe();
  ASSERT_FALSE(parent.empty());
  std::string file = directory_.WriteFile("not-a-directory", "");
  logs_before_ = ListDirectory(logs_);
  ExpectOneLineError(Forkvmm({"fork", parent, "--runtime-dir", file + "/runtime"}),
                     "forkvmm fork: ", "not-a-directory/runtime");
  ExpectParentUntouched(parent);
}

}  // namespace
}  // namespace forkvmm::integration
