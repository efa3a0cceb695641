#include "vmm/vm_runner.h"

#include <linux/kvm.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <fmt/core.h>

#include "vmm/base/event_loop.h"
#include "vmm/base/log.h"
#include "vmm/console.h"

namespace forkvmm {
namespace {

const char* ExitReasonName(size_t reason) {
  switch (reason) {
    case KVM_EXIT_IO: return "io";
    case KVM_EXIT_MMIO: return "mmio";
    case KVM_EXIT_HLT: return "hlt";
    case KVM_EXIT_SHUTDOWN: return "shutdown";
    case KVM_EXIT_INTR: return "intr";
    case KVM_EXIT_SYSTEM_EVENT: return "system_event";
    case KVM_EXIT_INTERNAL_ERROR: return "internal_error";
    default: return nullptr;
  }
}

Result<UniqueFd> BlockStopSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGHUP);
  // Blocked before the vCPU threads start, so they inherit the mask and the
  // signals reach only the signalfd below.
  if (pthread_sigmask(SIG_BLOCK, &set, nullptr) != 0) return Error("pthread_sigmask failed");
  UniqueFd fd(signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK));
  if (!fd.valid()) return Error::FromErrno("signalfd");
  return fd;
}

}  // namespace

std::string FormatVcpuStats(const std::vector<VcpuStats>& stats) {
  std::string out;
  for (size_t i = 0; i < stats.size(); ++i) {
    const VcpuStats& s = stats[i];
    out += fmt::format("vCPU {}: {:.3f} s in guest, {:.3f} s in VMM, {} interrupted runs; exits:",
                       i, static_cast<double>(s.guest_nanoseconds) / 1e9,
                       static_cast<double>(s.vmm_nanoseconds) / 1e9, s.interrupted_runs);
    for (size_t reason = 0; reason < s.exits_by_reason.size(); ++reason) {
      if (s.exits_by_reason[reason] == 0) continue;
      const char* name = ExitReasonName(reason);
      out += name ? fmt::format(" {}={}", name, s.exits_by_reason[reason])
                  : fmt::format(" reason{}={}", reason, s.exits_by_reason[reason]);
    }
    out += '\n';
  }
  return out;
}

Result<VmExit> RunVm(Vm& vm, const RunOptions& options) {
  ASSIGN_OR_RETURN(UniqueFd signal_fd, BlockStopSignals());
  ASSIGN_OR_RETURN(std::unique_ptr<EventLoop> loop, EventLoop::Create());
  EventLoop* loop_ptr = loop.get();
  vm.control().OnStop([loop_ptr] { loop_ptr->Quit(); });

  TRY(loop->Add(signal_fd.get(), EPOLLIN, [&vm, &signal_fd](uint32_t) {
    signalfd_siginfo info{};
    if (read(signal_fd.get(), &info, sizeof(info)) != sizeof(info)) return;
    vm.RequestStop({VmExit::Reason::kHostRequest, 128 + static_cast<int>(info.ssi_signo),
                    fmt::format("stopped by signal {}", strsignal(static_cast<int>(info.ssi_signo)))});
  }));

  std::optional<RawTerminal> raw_terminal =
      options.attach_stdin ? RawTerminal::Enter(STDIN_FILENO) : std::nullopt;
  ConsoleEscape escape;
  if (options.attach_stdin) {
    TRY(loop->Add(STDIN_FILENO, EPOLLIN, [&](uint32_t) {
      uint8_t buffer[256];
      ssize_t n = read(STDIN_FILENO, buffer, sizeof(buffer));
      if (n <= 0) {
        // End of input: the guest keeps running without a console.
        loop_ptr->Remove(STDIN_FILENO);
        return;
      }
      bool quit = false;
      std::string bytes = escape.Filter({buffer, static_cast<size_t>(n)}, &quit);
      // NOTE: input beyond the serial FIFO's capacity is dropped; a paste
      // larger than 4 KiB into a guest that is not reading loses its tail.
      vm.serial().EnqueueInput({reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()});
      if (quit) vm.RequestStop({VmExit::Reason::kHostRequest, 0, "console requested exit"});
    }));
  }

  vm.Start();
  Status loop_status = loop->Run();
  if (!loop_status.ok()) {
    vm.RequestStop({VmExit::Reason::kError, 1, loop_status.error().message()});
  }
  VmExit exit = vm.WaitForStop();
  raw_terminal.reset();
  if (options.print_stats) {
    std::string stats = FormatVcpuStats(vm.vcpu_stats());
    ssize_t unused = write(STDERR_FILENO, stats.data(), stats.size());
    (void)unused;
  }
  return exit;
}

}  // namespace forkvmm
