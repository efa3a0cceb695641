#include "vmm/vm_process.h"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <linux/kvm.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <algorithm>
#include <set>
#include <sstream>

#include <fmt/core.h>

#include "vmm/base/log.h"
#include "vmm/vcpu_thread.h"

namespace forkvmm {
namespace {

using nlohmann::json;

// How long the parent waits for a fork child to report that its VM runs.
constexpr auto kChildReportTimeout = std::chrono::seconds(30);

// Replaces every "{id}" in `pattern` with `id`.
std::string ExpandId(std::string pattern, const std::string& id) {
  for (size_t at = pattern.find("{id}"); at != std::string::npos; at = pattern.find("{id}", at)) {
    pattern.replace(at, 4, id);
    at += id.size();
  }
  return pattern;
}

int64_t NowUnixMilliseconds() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

const char* StateName(VmState state) {
  switch (state) {
    case VmState::kCreated: return "prelaunch";
    case VmState::kRunning: return "running";
    case VmState::kPaused: return "paused";
    case VmState::kStopped: return "shutdown";
  }
  return "unknown";
}

Result<UniqueFd> CreateSignalFd() {
  sigset_t set;
  sigemptyset(&set);
  for (int signal : {SIGINT, SIGTERM, SIGHUP, SIGCHLD}) sigaddset(&set, signal);
  // Blocked before any vCPU thread starts, so those threads inherit the
  // mask and these signals reach only the signalfd.
  if (pthread_sigmask(SIG_BLOCK, &set, nullptr) != 0) return Error("pthread_sigmask failed");
  UniqueFd fd(signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK));
  if (!fd.valid()) return Error::FromErrno("signalfd");
  return fd;
}

// Closes every fd of this process except those in `keep`. A fork child
// uses it to drop the KVM, eventfd, io_uring, epoll and socket fds of its
// parent's VM: an open inherited VM fd keeps the parent's VM alive, and an
// inherited vCPU fd could still map the parent's kvm_run.
void CloseInheritedFds(const std::set<int>& keep) {
  std::vector<int> fds;
  if (DIR* directory = opendir("/proc/self/fd")) {
    while (dirent* entry = readdir(directory)) {
      if (entry->d_name[0] < '0' || entry->d_name[0] > '9') continue;
      int fd = std::atoi(entry->d_name);
      if (fd != dirfd(directory)) fds.push_back(fd);
    }
    closedir(directory);
  }
  for (int fd : fds) {
    if (!keep.contains(fd)) close(fd);
  }
}

void WriteLine(int fd, const std::string& line) {
  std::string text = line + "\n";
  ssize_t unused = write(fd, text.data(), text.size());
  (void)unused;
}

// Removes child `index`'s overlays: they are of no use to anyone once the
// child failed to start.
void RemoveChildOverlays(const DiskBranch& branch, size_t index) {
  for (const DiskBranch::Entry& entry : branch.entries) {
    unlink(entry.child_overlays[index].c_str());
  }
}

// Reads one line from a child's status pipe, waiting until `deadline`.
std::string ReadStatusLine(int fd, std::chrono::steady_clock::time_point deadline) {
  std::string line;
  while (line.find('\n') == std::string::npos) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return "error timed out waiting for the child to start";
    pollfd pfd{fd, POLLIN, 0};
    int ready = poll(&pfd, 1, static_cast<int>(left.count()));
    if (ready < 0 && errno == EINTR) continue;
    if (ready <= 0) continue;
    char buffer[512];
    ssize_t n = read(fd, buffer, sizeof(buffer));
    if (n <= 0) return line.empty() ? "error the child exited before starting its VM" : line;
    line.append(buffer, static_cast<size_t>(n));
  }
  return line.substr(0, line.find('\n'));
}

}  // namespace

Result<std::unique_ptr<VmProcess>> VmProcess::Boot(VmProcessOptions options) {
  ASSIGN_OR_RETURN(RuntimeDirectory runtime, RuntimeDirectory::Open(options.runtime_root));
  VmRecord record;
  record.id = runtime.NewId();
  record.name = options.name;
  record.pid = getpid();
  record.ram_bytes = options.config.ram_bytes;
  record.vcpu_count = options.config.vcpu_count;
  record.created_unix_ms = NowUnixMilliseconds();
  for (const DiskConfig& disk : options.config.disks) record.disks.push_back(disk.path);
  TRY(runtime.CreateVm(record));

  std::unique_ptr<VmProcess> process(new VmProcess(std::move(options)));
  auto fail = [&](Error error) {
    runtime.RemoveVm(record.id);
    return error;
  };
  int terminal = process->options_.foreground_console ? STDOUT_FILENO : -1;
  auto console = ConsoleHub::Create(runtime.VmDirectory(record.id) + "/serial.log",
                                    ExpandId(process->options_.serial_log, record.id), terminal);
  if (!console.ok()) return fail(std::move(console).error());
  process->console_ = *console;
  auto vm = Vm::Create(process->options_.config, process->options_.host, process->console_);
  if (!vm.ok()) return fail(std::move(vm).error());
  process->vm_ = std::move(vm).value();
  Status attached = process->Attach(runtime, record);
  if (!attached.ok()) return fail(std::move(attached).error());
  return process;
}

VmProcess::~VmProcess() {
  control_.reset();
  if (console_) console_->StopListening();
}

Status VmProcess::Attach(const RuntimeDirectory& runtime, VmRecord record) {
  runtime_ = runtime;
  record_ = std::move(record);
  TRY(runtime_->WriteRecord(record_));
  std::string directory = runtime_->VmDirectory(record_.id);
  ASSIGN_OR_RETURN(loop_, EventLoop::Create());
  ASSIGN_OR_RETURN(signal_fd_, CreateSignalFd());
  TRY(loop_->Add(signal_fd_.get(), EPOLLIN, [this](uint32_t) { OnSignal(); }));
  EventLoop* loop = loop_.get();
  vm_->control().OnStop([loop] { loop->Quit(); });

  ASSIGN_OR_RETURN(control_, ControlServer::Listen(directory + "/control.sock", *loop_,
                                                   [this](const std::string& command,
                                                          const json& arguments) {
                                                     return HandleCommand(command, arguments);
                                                   }));
  Vm* vm = vm_.get();
  TRY(console_->Listen(directory + "/console.sock", *loop_,
                       [vm](std::span<const uint8_t> bytes) { vm->serial().EnqueueInput(bytes); }));

  if (options_.foreground_console) {
    raw_terminal_ = RawTerminal::Enter(STDIN_FILENO);
    stdin_attached_ = loop_->Add(STDIN_FILENO, EPOLLIN, [this](uint32_t) {
                             uint8_t buffer[256];
                             ssize_t n = read(STDIN_FILENO, buffer, sizeof(buffer));
                             if (n <= 0) {
                               // End of input: the guest runs on without a console.
                               loop_->Remove(STDIN_FILENO);
                               return;
                             }
                             bool quit = false;
                             std::string bytes =
                                 escape_.Filter({buffer, static_cast<size_t>(n)}, &quit);
                             vm_->serial().EnqueueInput(
                                 {reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()});
                             if (quit) {
                               vm_->RequestStop(
                                   {VmExit::Reason::kHostRequest, 0, "console requested exit"});
                             }
                           }).ok();
  }
  return Ok();
}

void VmProcess::OnSignal() {
  signalfd_siginfo info{};
  while (read(signal_fd_.get(), &info, sizeof(info)) == sizeof(info)) {
    int signal = static_cast<int>(info.ssi_signo);
    if (signal == SIGCHLD) {
      // Reap fork children that exited; they are independent VMs.
      while (waitpid(-1, nullptr, WNOHANG) > 0) {
      }
      continue;
    }
    vm_->RequestStop({VmExit::Reason::kHostRequest, 128 + signal,
                      fmt::format("stopped by signal {}", strsignal(signal))});
  }
}

void VmProcess::ReportReady(const std::string& line) {
  if (options_.ready_fd < 0) return;
  WriteLine(options_.ready_fd, line);
  close(options_.ready_fd);
  options_.ready_fd = -1;
}

VmExit VmProcess::Run(bool start_paused) {
  vm_->Start(start_paused);
  ReportReady("ok " + record_.id + (ready_details_.empty() ? "" : " " + ready_details_));
  LOG_DEBUG("VM {} running (pid {})", record_.id, getpid());
  Status loop_status = loop_->Run();
  if (!loop_status.ok()) {
    vm_->RequestStop({VmExit::Reason::kError, 1, loop_status.error().message()});
  }
  VmExit exit = vm_->WaitForStop();
  control_->Broadcast("SHUTDOWN", {{"reason", exit.message}});
  raw_terminal_.reset();
  if (options_.print_stats) {
    std::string stats = FormatVcpuStats(vm_->vcpu_stats());
    ssize_t unused = write(STDERR_FILENO, stats.data(), stats.size());
    (void)unused;
  }
  control_.reset();
  console_->StopListening();
  runtime_->RemoveVm(record_.id);
  return exit;
}

json VmProcess::StatusJson() const {
  VmState state = vm_->state();
  return {{"running", state == VmState::kRunning},
          {"singlestep", false},
          {"status", StateName(state)}};
}

CommandReply VmProcess::HandleCommand(const std::string& command, const json& arguments) {
  if (command == "query-status") return CommandReply::Success(StatusJson());
  if (command == "stop") {
    if (vm_->state() == VmState::kRunning) {
      if (!vm_->Pause()) return CommandReply::Failure("the VM stopped");
      control_->Broadcast("STOP");
    }
    return CommandReply::Success();
  }
  if (command == "cont") {
    if (vm_->state() == VmState::kPaused) {
      vm_->Resume();
      control_->Broadcast("RESUME");
    }
    return CommandReply::Success();
  }
  if (command == "quit") {
    vm_->RequestStop({VmExit::Reason::kHostRequest, 0, "quit command"});
    return CommandReply::Success();
  }
  if (command == "query-forkvmm") {
    json info = StatusJson();
    info["id"] = record_.id;
    info["name"] = record_.name;
    info["parent_id"] = record_.parent_id;
    info["pid"] = record_.pid;
    info["ram_bytes"] = record_.ram_bytes;
    info["vcpu_count"] = record_.vcpu_count;
    info["created_unix_ms"] = record_.created_unix_ms;
    return CommandReply::Success(info);
  }
  if (command == "fork") return HandleFork(arguments);
  if (command == "pmemsave") return HandlePmemsave(arguments);
  if (command == "query-cpus-fast") {
    bool was_running = vm_->state() == VmState::kRunning;
    if (was_running && !vm_->Pause()) return CommandReply::Failure("the VM stopped");
    auto positions = vm_->QueryVcpus();
    std::vector<VcpuStats> stats = vm_->vcpu_stats();
    auto kvm_stats = vm_->KvmStats();
    if (was_running) vm_->Resume();
    if (!positions.ok()) return CommandReply::Failure(positions.error().message());
    json list = json::array();
    for (size_t i = 0; i < positions->size(); ++i) {
      const Vm::VcpuPosition& position = (*positions)[i];
      json entry = {{"cpu-index", i},
                    {"rip", fmt::format("{:#x}", position.rip)},
                    {"cpl", position.cpl},
                    {"mp-state", position.mp_state},
                    {"interrupts-enabled", position.interrupts_enabled}};
      if (i < stats.size()) {
        entry["guest-seconds"] = static_cast<double>(stats[i].guest_nanoseconds) / 1e9;
        entry["exits"] = stats[i].exits_by_reason[KVM_EXIT_IO] + stats[i].exits_by_reason[KVM_EXIT_MMIO];
      }
      if (i < kvm_stats.size() && !kvm_stats[i].empty()) {
        json kvm = json::object();
        for (const auto& [name, value] : kvm_stats[i]) {
          if (value != 0) kvm[name] = value;
        }
        entry["kvm-stats"] = kvm;
      }
      list.push_back(entry);
    }
    return CommandReply::Success(list);
  }
  return CommandReply::Failure(fmt::format("the command {} has not been found", command),
                               "CommandNotFound");
}

CommandReply VmProcess::HandlePmemsave(const json& arguments) {
  // QMP's pmemsave: {"val": guest-physical address, "size": bytes,
  // "filename": path}. The file is created by this process with mode 0600.
  uint64_t address = 0;
  uint64_t size = 0;
  std::string filename;
  try {
    address = arguments.at("val").get<uint64_t>();
    size = arguments.at("size").get<uint64_t>();
    filename = arguments.at("filename").get<std::string>();
  } catch (const json::exception& e) {
    return CommandReply::Failure(fmt::format("invalid pmemsave arguments: {}", e.what()));
  }
  constexpr uint64_t kMaxBytes = uint64_t{1} << 30;
  if (size > kMaxBytes) {
    return CommandReply::Failure(fmt::format("pmemsave size {} exceeds {} bytes", size, kMaxBytes));
  }
  auto host = vm_->memory().HostAddress(address, size);
  if (!host.ok()) return CommandReply::Failure(host.error().message());
  UniqueFd fd(open(filename.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  if (!fd.valid()) return CommandReply::Failure(Error::FromErrno("open", filename).message());
  const uint8_t* data = *host;
  uint64_t left = size;
  while (left > 0) {
    ssize_t n = write(fd.get(), data, left);
    if (n <= 0) return CommandReply::Failure(Error::FromErrno("write", filename).message());
    data += n;
    left -= static_cast<uint64_t>(n);
  }
  return CommandReply::Success();
}

CommandReply VmProcess::HandleFork(const json& arguments) {
  ForkRequest request;
  try {
    int64_t count = arguments.value("count", int64_t{1});
    if (count < 1 || count > kMaxForkCount) {
      return CommandReply::Failure(
          fmt::format("invalid fork count {}: expected 1 to {}", count, kMaxForkCount));
    }
    request.count = static_cast<uint32_t>(count);
    request.paused = arguments.value("paused", false);
    request.name = arguments.value("name", "");
    request.serial_log = arguments.value("serial_log", "");
  } catch (const json::exception& e) {
    return CommandReply::Failure(fmt::format("invalid fork arguments: {}", e.what()));
  }
  auto children = Fork(request);
  if (!children.ok()) return CommandReply::Failure(children.error().message());
  json list = json::array();
  for (const ForkedChild& child : *children) {
    json entry = {{"id", child.id},
                  {"name", child.name},
                  {"pid", child.pid},
                  {"ready_ms", child.ready_ms}};
    // The child's phases, measured from its birth: "name_ms=value ...".
    std::istringstream details(child.details);
    std::string field;
    while (details >> field) {
      size_t equals = field.find('=');
      if (equals == std::string::npos) continue;
      entry["child_" + field.substr(0, equals)] = std::atof(field.c_str() + equals + 1);
    }
    list.push_back(entry);
  }
  return CommandReply::Success(
      {{"children", list},
       {"timing",
        {{"prepare_ms", last_fork_timing_.prepare_ms},
         {"pause_ms", last_fork_timing_.pause_ms},
         {"capture_ms", last_fork_timing_.capture_ms},
         {"fork_ms", last_fork_timing_.fork_ms},
         {"parent_held_ms", last_fork_timing_.parent_held_ms},
         {"all_ready_ms", last_fork_timing_.all_ready_ms}}}});
}

Result<std::vector<VmProcess::ChildPlan>> VmProcess::PrepareChildren(
    const ForkRequest& request, const DiskBranch& branch,
    const std::vector<std::string>& child_ids, bool start_paused) {
  std::vector<ChildPlan> plans;
  auto undo = [&] {
    for (ChildPlan& plan : plans) {
      runtime_->RemoveVm(plan.record.id);
      close(plan.status_fd);
      close(plan.status_read_fd);
    }
  };
  for (uint32_t i = 0; i < request.count; ++i) {
    ChildPlan plan;
    plan.index = i;
    plan.paused = start_paused;
    plan.serial_log = request.serial_log;
    plan.disks = vm_->ChildDisks(branch, i);
    plan.record.id = child_ids[i];
    for (const DiskConfig& disk : plan.disks) plan.record.disks.push_back(disk.path);
    if (!request.name.empty()) {
      plan.record.name =
          request.count == 1 ? request.name : fmt::format("{}-{}", request.name, i + 1);
    }
    plan.record.parent_id = record_.id;
    // The parent's pid until the child writes its own, so `ls` does not
    // take the entry for a dead VM in the meantime.
    plan.record.pid = getpid();
    plan.record.ram_bytes = record_.ram_bytes;
    plan.record.vcpu_count = record_.vcpu_count;
    plan.record.created_unix_ms = NowUnixMilliseconds();
    Status created = runtime_->CreateVm(plan.record);
    if (!created.ok()) {
      undo();
      return std::move(created).error();
    }
    int pipe_fds[2];
    if (pipe2(pipe_fds, O_CLOEXEC) != 0) {
      Error error = Error::FromErrno("pipe2");
      runtime_->RemoveVm(plan.record.id);
      undo();
      return error;
    }
    plan.status_read_fd = pipe_fds[0];
    plan.status_fd = pipe_fds[1];
    plans.push_back(std::move(plan));
  }
  return plans;
}

Result<std::vector<ForkedChild>> VmProcess::Fork(const ForkRequest& request) {
  if (request.count < 1 || request.count > kMaxForkCount) {
    return Error(fmt::format("invalid fork count {}: expected 1 to {}", request.count,
                             kMaxForkCount));
  }
  using Clock = std::chrono::steady_clock;
  auto milliseconds = [](Clock::time_point from, Clock::time_point to) {
    return std::chrono::duration<double, std::milli>(to - from).count();
  };
  Clock::time_point start = Clock::now();

  // Phase 1, with the VM still running: ids, disk overlays, runtime
  // entries and status pipes, so the pause covers only what needs it.
  std::vector<std::string> child_ids;
  while (child_ids.size() < request.count) {
    std::string id = runtime_->NewId();
    if (std::find(child_ids.begin(), child_ids.end(), id) == child_ids.end()) {
      child_ids.push_back(id);
    }
  }
  ASSIGN_OR_RETURN(DiskBranch branch,
                   vm_->PrepareBranch(record_.id, fork_generation_ + 1, child_ids));
  bool was_running = vm_->state() == VmState::kRunning;
  auto plans = PrepareChildren(request, branch, child_ids, request.paused || !was_running);
  if (!plans.ok()) {
    Vm::DiscardBranch(branch);
    return std::move(plans).error();
  }
  auto abandon_plans = [&] {
    for (ChildPlan& plan : *plans) {
      runtime_->RemoveVm(plan.record.id);
      close(plan.status_fd);
      close(plan.status_read_fd);
    }
  };
  Clock::time_point prepared = Clock::now();

  // Phase 2, paused: park the vCPUs, complete in-flight disk requests,
  // capture the state and freeze the disks' top layers.
  if (was_running && !vm_->Pause()) {
    abandon_plans();
    Vm::DiscardBranch(branch);
    return Error("the VM stopped before it could be paused");
  }
  Clock::time_point paused_at = Clock::now();
  auto resume = [&] {
    Status resumed = vm_->ResumeDisks();
    if (!resumed.ok()) LOG_ERROR("fork: {}", resumed.error().message());
    if (was_running) vm_->Resume();
  };
  Status quiesced = vm_->QuiesceDisks();
  auto state = quiesced.ok() ? vm_->CaptureState() : Result<snapshot::VmState>(quiesced.error());
  Status frozen = state.ok() ? vm_->FreezeBranch(branch) : Status(state.error());
  if (!frozen.ok()) {
    if (state.ok()) {
      // FreezeBranch removed the overlays and moved any frozen layer on.
    } else {
      Vm::DiscardBranch(branch);
    }
    resume();
    abandon_plans();
    return std::move(frozen).error().WithContext("fork");
  }
  ++fork_generation_;
  Clock::time_point captured = Clock::now();

  // Phase 3: the fork() calls. Each child continues in RunChild().
  std::vector<Pending> pending;
  std::vector<std::string> failures;
  for (ChildPlan& plan : *plans) {
    // Nothing buffered may be written twice, once by each process.
    std::fflush(nullptr);
    pid_t pid = fork();
    if (pid == 0) {
      close(plan.status_read_fd);
      RunChild(plan, *state);
    }
    if (pid < 0) {
      failures.push_back(Error::FromErrno("fork").message());
      break;
    }
    close(plan.status_fd);
    plan.forked = true;
    pending.push_back({{plan.record.id, plan.record.name, pid, 0}, UniqueFd(plan.status_read_fd),
                       plan.index});
  }
  Clock::time_point forked = Clock::now();

  // The children have their copies; this VM moves to its own new overlays.
  Status adopted = vm_->AdoptBranch(branch);
  if (!adopted.ok()) {
    LOG_ERROR("fork: switching to the new disk overlays: {}", adopted.error().message());
  }
  resume();
  Clock::time_point resumed_at = Clock::now();

  // Phase 4, running again: bookkeeping and the children's reports.
  for (ChildPlan& plan : *plans) {
    if (plan.forked) continue;
    // fork() failed at or before this child: it never existed.
    close(plan.status_fd);
    close(plan.status_read_fd);
    runtime_->RemoveVm(plan.record.id);
    RemoveChildOverlays(branch, plan.index);
  }
  record_.disks.clear();
  for (const DiskConfig& disk : vm_->disks()) record_.disks.push_back(disk.path);
  Status recorded = runtime_->WriteRecord(record_);
  if (!recorded.ok()) LOG_WARNING("fork: {}", recorded.error().message());
  std::vector<ForkedChild> children = CollectChildren(pending, branch, start, failures);
  Clock::time_point done = Clock::now();

  last_fork_timing_ = {milliseconds(start, prepared),  milliseconds(prepared, paused_at),
                       milliseconds(paused_at, captured), milliseconds(captured, forked),
                       milliseconds(prepared, resumed_at), milliseconds(start, done)};
  LOG_INFO("forked {} of {} children: prepare {:.3f} ms, pause {:.3f} ms, capture {:.3f} ms, "
           "fork {:.3f} ms, parent held {:.3f} ms, all running after {:.3f} ms",
           children.size(), request.count, last_fork_timing_.prepare_ms,
           last_fork_timing_.pause_ms, last_fork_timing_.capture_ms, last_fork_timing_.fork_ms,
           last_fork_timing_.parent_held_ms, last_fork_timing_.all_ready_ms);
  for (const ForkedChild& child : children) {
    control_->Broadcast("FORK", {{"child_id", child.id}, {"child_pid", child.pid}});
  }
  if (children.empty() && !failures.empty()) return Error(failures.front());
  for (const std::string& failure : failures) LOG_WARNING("fork: {}", failure);
  return children;
}

std::vector<ForkedChild> VmProcess::CollectChildren(std::vector<Pending>& pending,
                                                    const DiskBranch& branch,
                                                    std::chrono::steady_clock::time_point start,
                                                    std::vector<std::string>& failures) {
  std::vector<ForkedChild> children;
  auto deadline = std::chrono::steady_clock::now() + kChildReportTimeout;
  for (Pending& entry : pending) {
    std::string line = ReadStatusLine(entry.status.get(), deadline);
    if (line.starts_with("ok")) {
      entry.child.ready_ms = std::chrono::duration<double, std::milli>(
                                 std::chrono::steady_clock::now() - start)
                                 .count();
      // "ok <id> key=value ...": the child's own timing, for benchmarks.
      size_t details = line.find(' ', 3);
      if (details != std::string::npos) entry.child.details = line.substr(details + 1);
      children.push_back(entry.child);
      continue;
    }
    std::string reason = line.starts_with("error ") ? line.substr(6) : line;
    failures.push_back(fmt::format("child {}: {}", entry.child.id, reason));
    // The pid is this process's own child, not yet reaped.
    kill(entry.child.pid, SIGKILL);
    runtime_->RemoveVm(entry.child.id);
    RemoveChildOverlays(branch, entry.index);
  }
  return children;
}

void VmProcess::RunChild(const ChildPlan& plan, const snapshot::VmState& state) {
  using Clock = std::chrono::steady_clock;
  Clock::time_point born = Clock::now();
  auto since_born = [&born] {
    return std::chrono::duration<double, std::milli>(Clock::now() - born).count();
  };
  setsid();
  std::string directory = runtime_->VmDirectory(plan.record.id);
  int null_fd = open("/dev/null", O_RDONLY);
  int log_fd = open((directory + "/vmm.log").c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
  if (null_fd >= 0) dup2(null_fd, STDIN_FILENO);
  if (log_fd >= 0) {
    dup2(log_fd, STDOUT_FILENO);
    dup2(log_fd, STDERR_FILENO);
  }
  std::set<int> keep = {STDIN_FILENO, STDOUT_FILENO, STDERR_FILENO, plan.status_fd};
  if (vm_->memory().backing_fd() >= 0) keep.insert(vm_->memory().backing_fd());
  CloseInheritedFds(keep);
  SetLogPrefix(fmt::format("forkvmm[{}]", getpid()));
  double cleaned_ms = since_born();

  auto fail = [&plan](const Error& error) {
    LOG_ERROR("fork child: {}", error.message());
    WriteLine(plan.status_fd, "error " + error.message());
    _exit(1);
  };
  VmProcessOptions options = options_;
  options.config.disks = plan.disks;
  options.name = plan.record.name;
  options.foreground_console = false;
  options.print_stats = false;
  options.ready_fd = -1;
  std::unique_ptr<VmProcess> child(new VmProcess(std::move(options)));
  auto console = ConsoleHub::Create(directory + "/serial.log",
                                    ExpandId(plan.serial_log, plan.record.id), -1);
  if (!console.ok()) fail(console.error());
  child->console_ = *console;
  auto vm = Vm::Restore(child->options_.config, child->options_.host, child->console_,
                        vm_->TakeMemoryForChild(), state);
  if (!vm.ok()) fail(vm.error());
  child->vm_ = std::move(vm).value();
  double restored_ms = since_born();
  VmRecord record = plan.record;
  record.pid = getpid();
  Status attached = child->Attach(*runtime_, record);
  if (!attached.ok()) fail(attached.error());
  double attached_ms = since_born();

  // Run() reports "ok" once the vCPU threads run (or are parked, when
  // paused), so the parent's timing covers the whole start.
  child->options_.ready_fd = plan.status_fd;
  child->ready_details_ = fmt::format("closed_fds_ms={:.3f} restored_ms={:.3f} attached_ms={:.3f}",
                                      cleaned_ms, restored_ms, attached_ms);
  VmExit exit = child->Run(plan.paused);
  LOG_INFO("VM {} stopped: {}", record.id, exit.message);
  std::fflush(nullptr);
  _exit(exit.status);
}

}  // namespace forkvmm
