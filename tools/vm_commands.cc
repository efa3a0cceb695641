// Commands that act on running VMs through the runtime directory and their
// control sockets: fork, ls, pause, resume, kill, console, logs.
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <thread>

#include <fmt/core.h>

#include "tools/command.h"
#include "vmm/console.h"
#include "vmm/control_client.h"
#include "vmm/runtime.h"
#include "vmm/vm_process.h"

namespace forkvmm::cli {
namespace {

using nlohmann::json;

struct Target {
  std::string vm;
  std::string runtime_dir;
};

void Fail(const std::string& command, const std::string& message) {
  std::fprintf(stderr, "forkvmm %s: %s\n", command.c_str(), message.c_str());
}

void AddRuntimeDirOption(CLI::App* app, std::string& runtime_dir) {
  app->add_option("--runtime-dir", runtime_dir,
                  "Where VMs register (default: $FORKVMM_RUNTIME_DIR, $XDG_RUNTIME_DIR/forkvmm "
                  "or /run/forkvmm)");
}

void AddTargetOptions(CLI::App* app, Target& target) {
  app->add_option("vm", target.vm, "VM id, unique id prefix, or name")->required();
  AddRuntimeDirOption(app, target.runtime_dir);
}

// Accepts a finite number of seconds >= 0. CLI11's NonNegativeNumber lets
// "nan" and "inf" through.
const CLI::Validator kSeconds(
    [](std::string& text) -> std::string {
      double value = 0;
      const char* end = text.data() + text.size();
      auto [parsed_end, error] = std::from_chars(text.data(), end, value);
      if (text.empty() || error != std::errc() || parsed_end != end || !std::isfinite(value) ||
          value < 0) {
        return fmt::format("invalid value '{}': expected a number of seconds >= 0", text);
      }
      return "";
    },
    "SECONDS");

struct Located {
  RuntimeDirectory runtime;
  VmRecord record;
};

Result<Located> Locate(const Target& target) {
  ASSIGN_OR_RETURN(RuntimeDirectory runtime, RuntimeDirectory::Open(target.runtime_dir));
  ASSIGN_OR_RETURN(VmRecord record, runtime.Find(target.vm));
  return Located{std::move(runtime), std::move(record)};
}

Result<ControlClient> Connect(const Located& located) {
  return ControlClient::Connect(located.runtime.VmDirectory(located.record.id) + "/control.sock");
}

// Runs one control command on the target VM and prints nothing on success.
int SimpleCommand(const std::string& name, const Target& target, const std::string& command) {
  auto located = Locate(target);
  if (!located.ok()) {
    Fail(name, located.error().message());
    return 1;
  }
  auto client = Connect(*located);
  if (!client.ok()) {
    Fail(name, client.error().message());
    return 1;
  }
  auto reply = client->Execute(command);
  if (!reply.ok()) {
    Fail(name, fmt::format("VM {}: {}", located->record.id, reply.error().message()));
    return 1;
  }
  return 0;
}

// --- fork ---

struct ForkArguments {
  Target target;
  // Kept as text and parsed by ParseForkCount: CLI11 turns a number too
  // large for int64_t into INT64_MAX, so its error would name a value the
  // user never typed.
  std::string count = "1";
  bool paused = false;
  std::string name;
  std::string serial_log;
  bool json_output = false;
};

// Parses --count: a decimal number of children from 1 to kMaxForkCount.
Result<uint32_t> ParseForkCount(const std::string& text) {
  int64_t count = 0;
  const char* end = text.data() + text.size();
  auto [parsed_end, error] = std::from_chars(text.data(), end, count);
  if (text.empty() || error != std::errc() || parsed_end != end || count < 1 ||
      count > VmProcess::kMaxForkCount) {
    // NOTE: only an empty value is quoted, because the fork tests match the
    // unquoted form of the others.
    return Error(fmt::format("invalid --count {}: expected an integer from 1 to {}",
                             text.empty() ? "''" : text, VmProcess::kMaxForkCount));
  }
  return static_cast<uint32_t>(count);
}

int RunFork(const ForkArguments& args) {
  Result<uint32_t> count = ParseForkCount(args.count);
  if (!count.ok()) {
    Fail("fork", count.error().message());
    return 1;
  }
  auto located = Locate(args.target);
  if (!located.ok()) {
    Fail("fork", located.error().message());
    return 1;
  }
  auto client = Connect(*located);
  if (!client.ok()) {
    Fail("fork", client.error().message());
    return 1;
  }
  json arguments = {{"count", *count}, {"paused", args.paused}};
  if (!args.name.empty()) arguments["name"] = args.name;
  if (!args.serial_log.empty()) {
    // The child process resolves the path, so make it absolute here.
    std::string path = args.serial_log;
    if (!path.starts_with('/')) path = std::filesystem::current_path().string() + "/" + path;
    arguments["serial_log"] = path;
  }
  auto reply = client->Execute("fork", arguments);
  if (!reply.ok()) {
    Fail("fork", fmt::format("VM {}: {}", located->record.id, reply.error().message()));
    return 1;
  }
  if (args.json_output) {
    std::printf("%s\n", reply->dump(2).c_str());
    return 0;
  }
  for (const json& child : (*reply)["children"]) {
    std::printf("%s\n", child["id"].get<std::string>().c_str());
  }
  return 0;
}

Command AddFork(CLI::App& parent, const std::shared_ptr<ForkArguments>& args) {
  CLI::App* app = parent.add_subcommand("fork", "Fork a running or paused VM into new VMs");
  AddTargetOptions(app, args->target);
  app->add_option("-n,--count", args->count, "Number of children")->capture_default_str();
  app->add_flag("--paused", args->paused, "Leave the children paused");
  app->add_option("--name", args->name,
                  "Name of the child (with --count N, names get -1 .. -N appended)");
  app->add_option("--serial-log", args->serial_log,
                  "Also append each child's console output to this file (\"{id}\" becomes the "
                  "child's id); it stays after the child stops");
  app->add_flag("--json", args->json_output, "Print the children as JSON (id, name, pid)");
  app->footer("Prints the id of each child, one per line. Each child is its own process.");
  return {app, [args] { return RunFork(*args); }};
}

// --- ls ---

std::string FormatDuration(int64_t milliseconds) {
  int64_t seconds = milliseconds / 1000;
  if (seconds < 60) return fmt::format("{}s", seconds);
  if (seconds < 3600) return fmt::format("{}m{}s", seconds / 60, seconds % 60);
  return fmt::format("{}h{}m", seconds / 3600, (seconds / 60) % 60);
}

int RunList(const std::string& runtime_dir, bool json_output) {
  auto runtime = RuntimeDirectory::Open(runtime_dir);
  if (!runtime.ok()) {
    Fail("ls", runtime.error().message());
    return 1;
  }
  int64_t now = std::chrono::duration_cast<std::chrono::milliseconds>(
                    std::chrono::system_clock::now().time_since_epoch())
                    .count();
  json list = json::array();
  for (const VmRecord& record : runtime->List()) {
    std::string state = "unknown";
    auto client = ControlClient::Connect(runtime->VmDirectory(record.id) + "/control.sock",
                                         std::chrono::seconds(2));
    if (client.ok()) {
      auto status = client->Execute("query-status");
      if (status.ok()) state = status->value("status", "unknown");
    }
    list.push_back({{"id", record.id},
                    {"name", record.name},
                    {"parent_id", record.parent_id},
                    {"state", state},
                    {"pid", record.pid},
                    {"ram_bytes", record.ram_bytes},
                    {"vcpu_count", record.vcpu_count},
                    {"uptime_ms", now - record.created_unix_ms}});
  }
  if (json_output) {
    std::printf("%s\n", list.dump(2).c_str());
    return 0;
  }
  std::printf("%-12s  %-16s  %-12s  %-9s  %-8s  %8s  %4s  %s\n", "ID", "NAME", "PARENT", "STATE",
              "PID", "MEMORY", "CPUS", "UPTIME");
  for (const json& vm : list) {
    std::printf("%-12s  %-16s  %-12s  %-9s  %-8d  %7lluM  %4u  %s\n",
                vm["id"].get<std::string>().c_str(), vm["name"].get<std::string>().c_str(),
                vm["parent_id"].get<std::string>().c_str(), vm["state"].get<std::string>().c_str(),
                vm["pid"].get<int>(),
                static_cast<unsigned long long>(vm["ram_bytes"].get<uint64_t>() >> 20),
                vm["vcpu_count"].get<uint32_t>(),
                FormatDuration(vm["uptime_ms"].get<int64_t>()).c_str());
  }
  return 0;
}

// --- kill ---

int RunKill(const Target& target, double timeout_seconds) {
  auto located = Locate(target);
  if (!located.ok()) {
    Fail("kill", located.error().message());
    return 1;
  }
  pid_t pid = located->record.pid;
  uint64_t start_ticks = located->record.pid_start_ticks;
  auto alive = [pid, start_ticks] { return ProcessAlive(pid, start_ticks); };
  // Waits until the VM process is gone or `seconds` have passed.
  auto wait_for_exit = [&alive](double seconds) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
    while (alive() && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return !alive();
  };

  auto client = Connect(*located);
  if (client.ok()) {
    auto reply = client->Execute("quit");
    (void)reply;
  }
  if (wait_for_exit(timeout_seconds)) return 0;

  // The VM did not stop in time: end its process. The pid and its start
  // time came from the VM's own record and were checked just now. Waiting
  // for the exit lets the caller reuse the VM's disks at once.
  // NOTE: a process killed with io_uring requests in flight keeps its image
  // files, and their locks, open until the kernel's asynchronous ring
  // teardown ends, which can be a moment after the process is gone.
  kill(pid, SIGKILL);
  constexpr double kKillWaitSeconds = 10;
  if (!wait_for_exit(kKillWaitSeconds)) {
    Fail("kill", fmt::format("VM {} (pid {}) is still running {} s after SIGKILL",
                             located->record.id, pid, kKillWaitSeconds));
    return 1;
  }
  located->runtime.RemoveVm(located->record.id);
  return 0;
}

// --- console ---

struct ConsoleArguments {
  Target target;
  // After stdin ends, detach once the guest has printed nothing for this
  // many seconds.
  double linger_seconds = 1.0;
  // Detach after this many seconds in any case (0: no limit).
  double timeout_seconds = 0;
};

Result<UniqueFd> ConnectConsole(const std::string& path) {
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  if (path.size() >= sizeof(address.sun_path)) {
    return Error(fmt::format("console socket path {} is too long", path));
  }
  std::memcpy(address.sun_path, path.c_str(), path.size() + 1);
  UniqueFd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return Error::FromErrno("socket", path);
  if (connect(fd.get(), reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0) {
    return Error::FromErrno("connect", path);
  }
  return fd;
}

// Copies guest output from `console` to stdout and stdin to the guest until
// the VM stops, Ctrl-] is typed on a terminal, the guest has been quiet for
// the linger time after stdin ended, or the timeout has passed.
void RelayConsole(int console, bool terminal, const ConsoleArguments& args) {
  using Clock = std::chrono::steady_clock;
  constexpr uint8_t kDetachByte = 0x1d;  // Ctrl-]
  const auto linger = std::chrono::duration_cast<Clock::duration>(
      std::chrono::duration<double>(args.linger_seconds));
  std::optional<Clock::time_point> deadline;
  if (args.timeout_seconds > 0) {
    deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                  std::chrono::duration<double>(args.timeout_seconds));
  }
  bool stdin_open = true;
  Clock::time_point last_output = Clock::now();
  while (true) {
    // The next time to stop at, if any: the timeout, or the end of the
    // linger time once stdin has ended.
    std::optional<Clock::time_point> stop_at = deadline;
    if (!stdin_open && (!stop_at || last_output + linger < *stop_at)) {
      stop_at = last_output + linger;
    }
    int timeout_ms = -1;
    if (stop_at) {
      auto left = std::chrono::ceil<std::chrono::milliseconds>(*stop_at - Clock::now());
      if (left.count() <= 0) return;
      timeout_ms = static_cast<int>(std::min<int64_t>(left.count(), INT32_MAX));
    }
    // poll() skips a negative fd. An ended pipe on stdin would otherwise
    // report POLLHUP on every call.
    pollfd fds[2] = {{console, POLLIN, 0}, {stdin_open ? STDIN_FILENO : -1, POLLIN, 0}};
    if (poll(fds, 2, timeout_ms) < 0) {
      if (errno == EINTR) continue;
      return;
    }
    if (fds[0].revents) {
      char buffer[4096];
      ssize_t n = read(console, buffer, sizeof(buffer));
      if (n <= 0) return;  // the VM stopped
      last_output = Clock::now();
      ssize_t unused = write(STDOUT_FILENO, buffer, static_cast<size_t>(n));
      (void)unused;
    }
    if (fds[1].revents) {
      uint8_t buffer[256];
      ssize_t n = read(STDIN_FILENO, buffer, sizeof(buffer));
      if (n <= 0) {
        stdin_open = false;
        last_output = Clock::now();
        continue;
      }
      if (terminal && std::memchr(buffer, kDetachByte, static_cast<size_t>(n)) != nullptr) return;
      if (send(console, buffer, static_cast<size_t>(n), MSG_NOSIGNAL) < 0) return;
    }
  }
}

int RunConsole(const ConsoleArguments& args) {
  auto located = Locate(args.target);
  if (!located.ok()) {
    Fail("console", located.error().message());
    return 1;
  }
  auto console =
      ConnectConsole(located->runtime.VmDirectory(located->record.id) + "/console.sock");
  if (!console.ok()) {
    Fail("console", console.error().message());
    return 1;
  }
  bool terminal = isatty(STDIN_FILENO);
  if (terminal) {
    std::fprintf(stderr, "Connected to VM %s; press Ctrl-] to detach.\r\n",
                 located->record.id.c_str());
  }
  std::optional<RawTerminal> raw = RawTerminal::Enter(STDIN_FILENO);
  RelayConsole(console->get(), terminal, args);
  raw.reset();
  if (terminal) std::fprintf(stderr, "\nDetached from VM %s.\n", located->record.id.c_str());
  return 0;
}

// --- qmp ---

int RunQmp(const Target& target, const std::string& command, const std::string& arguments) {
  json parsed = arguments.empty() ? json::object() : json::parse(arguments, nullptr, false);
  if (parsed.is_discarded() || !parsed.is_object()) {
    Fail("qmp", fmt::format("invalid arguments '{}': expected a JSON object", arguments));
    return 1;
  }
  auto located = Locate(target);
  if (!located.ok()) {
    Fail("qmp", located.error().message());
    return 1;
  }
  auto client = Connect(*located);
  if (!client.ok()) {
    Fail("qmp", client.error().message());
    return 1;
  }
  auto reply = client->Execute(command, parsed);
  if (!reply.ok()) {
    Fail("qmp", fmt::format("VM {}: {}", located->record.id, reply.error().message()));
    return 1;
  }
  std::printf("%s\n", reply->dump(2).c_str());
  return 0;
}

// --- logs ---

int RunLogs(const Target& target, bool follow) {
  auto located = Locate(target);
  if (!located.ok()) {
    Fail("logs", located.error().message());
    return 1;
  }
  std::string path = located->runtime.VmDirectory(located->record.id) + "/serial.log";
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    Fail("logs", fmt::format("cannot open {}", path));
    return 1;
  }
  char buffer[8192];
  while (true) {
    in.read(buffer, sizeof(buffer));
    std::streamsize n = in.gcount();
    if (n > 0) {
      std::fwrite(buffer, 1, static_cast<size_t>(n), stdout);
      std::fflush(stdout);
      continue;
    }
    if (!follow || !ProcessAlive(located->record.pid)) break;
    in.clear();
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return 0;
}

}  // namespace

std::vector<Command> AddVmCommands(CLI::App& parent) {
  std::vector<Command> commands;
  auto fork_args = std::make_shared<ForkArguments>();
  commands.push_back(AddFork(parent, fork_args));

  auto list_dir = std::make_shared<std::string>();
  auto list_json = std::make_shared<bool>(false);
  CLI::App* ls = parent.add_subcommand("ls", "List running VMs");
  ls->add_flag("--json", *list_json, "Print JSON instead of a table");
  AddRuntimeDirOption(ls, *list_dir);
  commands.push_back({ls, [list_dir, list_json] { return RunList(*list_dir, *list_json); }});

  for (auto [name, command, help] :
       {std::tuple{"pause", "stop", "Pause a VM's vCPUs"},
        std::tuple{"resume", "cont", "Resume a paused VM"}}) {
    auto target = std::make_shared<Target>();
    CLI::App* app = parent.add_subcommand(name, help);
    AddTargetOptions(app, *target);
    std::string name_copy = name, command_copy = command;
    commands.push_back(
        {app, [target, name_copy, command_copy] { return SimpleCommand(name_copy, *target, command_copy); }});
  }

  auto kill_target = std::make_shared<Target>();
  auto kill_timeout = std::make_shared<double>(10.0);
  CLI::App* kill_app = parent.add_subcommand("kill", "Stop a VM and end its process");
  AddTargetOptions(kill_app, *kill_target);
  kill_app->add_option("--timeout", *kill_timeout,
                       "Seconds to wait for a clean stop before SIGKILL")
      ->capture_default_str()
      ->check(kSeconds);
  commands.push_back(
      {kill_app, [kill_target, kill_timeout] { return RunKill(*kill_target, *kill_timeout); }});

  auto console_args = std::make_shared<ConsoleArguments>();
  CLI::App* console = parent.add_subcommand("console", "Attach to a VM's serial console");
  AddTargetOptions(console, console_args->target);
  console
      ->add_option("--linger", console_args->linger_seconds,
                   "After the end of stdin, detach once the guest has printed nothing for this "
                   "many seconds")
      ->capture_default_str()
      ->check(kSeconds);
  console
      ->add_option("--timeout", console_args->timeout_seconds,
                   "Detach after this many seconds in any case (0: no limit)")
      ->capture_default_str()
      ->check(kSeconds);
  console->footer(
      "On a terminal, Ctrl-] detaches. From a pipe or file, for example\n"
      "  echo 'mem read' | forkvmm console vm\n"
      "the input goes to the guest and the command detaches after --linger.\n"
      "Detaching exits 0 and leaves the VM running.");
  commands.push_back({console, [console_args] { return RunConsole(*console_args); }});

  auto qmp_target = std::make_shared<Target>();
  auto qmp_command = std::make_shared<std::string>();
  auto qmp_arguments = std::make_shared<std::string>();
  CLI::App* qmp = parent.add_subcommand("qmp", "Send one control command to a VM and print the reply");
  AddTargetOptions(qmp, *qmp_target);
  qmp->add_option("command", *qmp_command,
                  "query-status, stop, cont, quit, fork, query-forkvmm, query-cpus-fast")
      ->required();
  qmp->add_option("arguments", *qmp_arguments, "The command's arguments as a JSON object");
  commands.push_back({qmp, [qmp_target, qmp_command, qmp_arguments] {
                        return RunQmp(*qmp_target, *qmp_command, *qmp_arguments);
                      }});

  auto logs_target = std::make_shared<Target>();
  auto follow = std::make_shared<bool>(false);
  CLI::App* logs = parent.add_subcommand("logs", "Print a VM's console output so far");
  AddTargetOptions(logs, *logs_target);
  logs->add_flag("-f,--follow", *follow, "Keep printing new output until the VM stops");
  commands.push_back({logs, [logs_target, follow] { return RunLogs(*logs_target, *follow); }});
  return commands;
}

int RunForkShortcut(const std::string& vm, const std::string& runtime_dir) {
  ForkArguments args;
  args.target = {vm, runtime_dir};
  return RunFork(args);
}

}  // namespace forkvmm::cli
