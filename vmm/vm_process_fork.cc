// The fork half of VmProcess: preparing children, the paused section with
// the fork() calls, collecting the children's reports, and the child's own
// start (see vm_process.h for the sequence).
#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <set>
#include <sstream>

#include <fmt/core.h>

#include "vmm/base/log.h"
#include "vmm/vm_process.h"
#include "vmm/vm_process_internal.h"

namespace forkvmm {
namespace {

using internal::ExpandId;
using internal::NowUnixMilliseconds;
using internal::WriteLine;
using nlohmann::json;

// How long the parent waits for a fork child to report that its VM runs.
constexpr auto kChildReportTimeout = std::chrono::seconds(30);

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

Result<ForkRequest> ParseForkRequest(const json& arguments) {
  if (!arguments.is_object()) return Error("invalid fork arguments: expected a JSON object");
  ForkRequest request;
  if (auto count = arguments.find("count"); count != arguments.end()) {
    // Only integers: get<int64_t>() would truncate 2.5, and converting a
    // float beyond int64_t's range such as 1e30 is undefined behavior.
    bool in_range = false;
    if (count->is_number_unsigned()) {
      in_range = count->get<uint64_t>() >= 1 && count->get<uint64_t>() <= VmProcess::kMaxForkCount;
    } else if (count->is_number_integer()) {
      in_range = count->get<int64_t>() >= 1 && count->get<int64_t>() <= VmProcess::kMaxForkCount;
    }
    if (!in_range) {
      return Error(fmt::format("invalid fork count {}: expected an integer from 1 to {}",
                               count->dump(), VmProcess::kMaxForkCount));
    }
    request.count = count->get<uint32_t>();
  }
  if (auto paused = arguments.find("paused"); paused != arguments.end()) {
    if (!paused->is_boolean()) {
      return Error(
          fmt::format("invalid fork argument paused {}: expected true or false", paused->dump()));
    }
    request.paused = paused->get<bool>();
  }
  for (auto [key, field] :
       {std::pair{"name", &request.name}, std::pair{"serial_log", &request.serial_log}}) {
    auto value = arguments.find(key);
    if (value == arguments.end()) continue;
    if (!value->is_string()) {
      return Error(
          fmt::format("invalid fork argument {} {}: expected a string", key, value->dump()));
    }
    *field = value->get<std::string>();
  }
  return request;
}

CommandReply VmProcess::HandleFork(const json& arguments) {
  auto request = ParseForkRequest(arguments);
  if (!request.ok()) return CommandReply::Failure(request.error().message());
  auto children = Fork(*request);
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
  // Destroying the child's VM closes its disks, which writes back the qcow2
  // metadata still cached; _exit alone left leaked clusters in the overlay.
  child.reset();
  LOG_INFO("VM {} stopped: {}", record.id, exit.message);
  std::fflush(nullptr);
  _exit(exit.status);
}

}  // namespace forkvmm
