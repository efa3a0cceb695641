#include "vmm/vm_process.h"

#include <fcntl.h>
#include <linux/kvm.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>

#include <fmt/core.h>

#include "vmm/base/log.h"
#include "vmm/vcpu_thread.h"
#include "vmm/vm_process_internal.h"

namespace forkvmm {
namespace {

using internal::ExpandId;
using internal::NowUnixMilliseconds;
using internal::WriteLine;
using nlohmann::json;

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

// The control commands HandleCommand serves and the arguments of each. The
// control server rejects any other command or argument, and relative paths.
std::vector<CommandSpec> ControlCommands() {
  return {
      {"query-status", {}},
      {"stop", {}},
      {"cont", {}},
      {"quit", {}},
      {"query-forkvmm", {}},
      {"query-cpus-fast", {}},
      {"fork", {{"count"}, {"paused"}, {"name"}, {"serial_log", true}}},
      {"pmemsave", {{"val"}, {"size"}, {"filename", true}}},
  };
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
                                                   ControlCommands(),
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
    std::string stats = FormatVcpuStats(vm_->vcpu_stats()) + console_->FormatDroppedBytes();
    ssize_t unused = write(STDERR_FILENO, stats.data(), stats.size());
    (void)unused;
  }
  control_.reset();
  console_->StopListening();
  if (exit.reason == VmExit::Reason::kError || exit.reason == VmExit::Reason::kShutdown) {
    runtime_->RemoveFailedVm(record_.id);
  } else {
    runtime_->RemoveVm(record_.id);
  }
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

}  // namespace forkvmm
