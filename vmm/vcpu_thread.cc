#include "vmm/vcpu_thread.h"

#include <signal.h>
#include <time.h>

#include <fmt/core.h>

#include "memory/page_walk.h"
#include "vmm/base/log.h"

namespace forkvmm {
namespace {

int KickSignal() { return SIGRTMIN; }

uint64_t NowNanoseconds() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000u + static_cast<uint64_t>(ts.tv_nsec);
}

RateLimiter g_unhandled_io_limiter(10, std::chrono::seconds(5));
RateLimiter g_fwait_limiter(5, std::chrono::seconds(60));

// FWAIT (opcode 9b), and the bit of the x87 status word that is set while an
// unmasked exception is pending (Intel SDM vol. 1, 8.1.3).
constexpr uint8_t kFwaitOpcode = 0x9b;
constexpr uint16_t kFpuStatusExceptionSummary = 1u << 7;

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

}  // namespace

void VcpuThread::InstallKickSignalHandler() {
  struct sigaction action {};
  action.sa_handler = [](int) {};
  sigemptyset(&action.sa_mask);
  sigaction(KickSignal(), &action, nullptr);
}

void VcpuThread::Start() {
  thread_ = std::thread([this] {
    native_handle_.store(pthread_self());
    started_.store(true);
    std::string name = fmt::format("vcpu{}", vcpu_.id());
    pthread_setname_np(pthread_self(), name.c_str());
    Loop();
    control_.VcpuExited();
  });
}

void VcpuThread::Kick() {
  vcpu_.RequestExit();
  if (started_.load()) pthread_kill(native_handle_.load(), KickSignal());
}

void VcpuThread::Join() {
  if (thread_.joinable()) thread_.join();
}

VcpuStats VcpuThread::stats() const {
  std::lock_guard lock(stats_mutex_);
  return stats_;
}

void VcpuThread::Fail(std::string message) {
  control_.Stop({VmExit::Reason::kError, 1, fmt::format("vCPU {}: {}", vcpu_.id(), message)});
}

void VcpuThread::Loop() {
  // The kick signal must be deliverable on this thread.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, KickSignal());
  pthread_sigmask(SIG_UNBLOCK, &set, nullptr);

  auto clear = [this] { vcpu_.ClearExitRequest(); };
  // Set after an I/O or MMIO exit, which KVM completes at the next KVM_RUN.
  bool completion_pending = false;
  auto complete_pending_exit = [this, &completion_pending] {
    if (!completion_pending) return;
    vcpu_.RequestExit();
    Status status = vcpu_.Run();
    completion_pending = false;
    if (!status.ok() && status.error().errnum() != EINTR) {
      LOG_WARNING("vCPU {}: completing the last I/O exit before parking failed: {}", vcpu_.id(),
                  status.error().message());
    }
  };
  while (control_.WaitUntilRunnable(vcpu_.id(), clear, complete_pending_exit)) {
    uint64_t entered = NowNanoseconds();
    Status status = vcpu_.Run();
    uint64_t exited = NowNanoseconds();
    completion_pending = false;
    if (!status.ok()) {
      if (status.error().errnum() == EINTR || status.error().errnum() == EAGAIN) {
        std::lock_guard lock(stats_mutex_);
        ++stats_.interrupted_runs;
        stats_.guest_nanoseconds += exited - entered;
        continue;
      }
      Fail(status.error().message());
      return;
    }
    bool keep_running = HandleExit();
    uint64_t handled = NowNanoseconds();
    uint32_t handled_reason = vcpu_.run_state()->exit_reason;
    completion_pending = handled_reason == KVM_EXIT_IO || handled_reason == KVM_EXIT_MMIO;
    {
      std::lock_guard lock(stats_mutex_);
      uint32_t reason = vcpu_.run_state()->exit_reason;
      ++stats_.exits_by_reason[std::min<size_t>(reason, VcpuStats::kReasons - 1)];
      stats_.guest_nanoseconds += exited - entered;
      stats_.vmm_nanoseconds += handled - exited;
    }
    if (!keep_running) return;
  }
}

bool VcpuThread::HandleExit() {
  kvm_run& run = *vcpu_.run_state();
  switch (run.exit_reason) {
    case KVM_EXIT_IO:
      HandlePortIo(run);
      return true;
    case KVM_EXIT_MMIO:
      HandleMmio(run);
      return true;
    case KVM_EXIT_INTR:
      return true;
    case KVM_EXIT_HLT:
      // Only without an in-kernel LAPIC; forkvmm always has one.
      return true;
    case KVM_EXIT_SHUTDOWN:
      control_.Stop({VmExit::Reason::kShutdown, 1,
                     fmt::format("vCPU {}: guest shut down (triple fault)", vcpu_.id())});
      return false;
    case KVM_EXIT_SYSTEM_EVENT:
      if (run.system_event.type == KVM_SYSTEM_EVENT_RESET) {
        control_.Stop({VmExit::Reason::kGuestReset, 0, "guest reset the machine"});
      } else {
        control_.Stop({VmExit::Reason::kGuestReset, 0, "guest powered off"});
      }
      return false;
    case KVM_EXIT_FAIL_ENTRY:
      Fail(fmt::format("KVM_RUN failed to enter the guest (hardware reason {:#x})",
                       run.fail_entry.hardware_entry_failure_reason));
      return false;
    case KVM_EXIT_INTERNAL_ERROR: {
      if (run.internal.suberror == KVM_INTERNAL_ERROR_EMULATION && fwait_memory_ != nullptr) {
        Result<bool> stepped = StepOverFailedFwait();
        if (stepped.ok() && *stepped) return true;
        if (!stepped.ok()) {
          LogLimited(g_fwait_limiter, LogLevel::kWarning,
                     "vCPU {}: reading the instruction KVM failed to emulate failed: {}",
                     vcpu_.id(), stepped.error().message());
        }
      }
      auto regs = vcpu_.GetRegs();
      std::string data;
      uint32_t words = std::min<uint32_t>(run.internal.ndata, std::size(run.internal.data));
      for (uint32_t i = 0; i < words; ++i) data += fmt::format(" {:#x}", run.internal.data[i]);
      Fail(fmt::format("KVM internal error, suberror {} at rip {:#x}{}{}", run.internal.suberror,
                       regs.ok() ? regs->rip : 0, data.empty() ? "" : "; data:", data));
      return false;
    }
    default:
      Fail(fmt::format("unexpected KVM exit reason {}", run.exit_reason));
      return false;
  }
}

// kvm_pvm's instruction emulator fails on FWAIT at CPL0, which Linux runs
// in fpu__drop() at every task exit. FWAIT only raises a pending unmasked
// x87 exception as #MF, so with none pending, stepping over it is exact.
// With one pending, the VM still ends with the internal error.
Result<bool> VcpuThread::StepOverFailedFwait() {
  ASSIGN_OR_RETURN(kvm_regs regs, vcpu_.GetRegs());
  ASSIGN_OR_RETURN(kvm_sregs sregs, vcpu_.GetSregs());
  memory::PagingState paging{
      .cr0 = sregs.cr0, .cr3 = sregs.cr3, .cr4 = sregs.cr4, .efer = sregs.efer};
  // In 64-bit mode the CS base is ignored; elsewhere it adds to RIP.
  uint64_t linear = sregs.cs.l ? regs.rip : sregs.cs.base + regs.rip;
  ASSIGN_OR_RETURN(uint64_t physical, memory::TranslateVirtual(*fwait_memory_, paging, linear));
  ASSIGN_OR_RETURN(uint8_t opcode, fwait_memory_->ReadObject<uint8_t>(physical));
  if (opcode != kFwaitOpcode) return false;
  ASSIGN_OR_RETURN(kvm_fpu fpu, vcpu_.GetFpu());
  if (fpu.fsw & kFpuStatusExceptionSummary) return false;

  regs.rip += 1;
  TRY(vcpu_.SetRegs(regs));
  {
    std::lock_guard lock(stats_mutex_);
    ++stats_.stepped_fwaits;
  }
  LogLimited(g_fwait_limiter, LogLevel::kInfo,
             "vCPU {}: stepped over FWAIT at {:#x}, which KVM's instruction emulator failed on",
             vcpu_.id(), regs.rip - 1);
  return true;
}

void VcpuThread::HandlePortIo(kvm_run& run) {
  // KVM places the data inside the kvm_run mapping at data_offset; `count`
  // accesses of `size` bytes each for string instructions.
  auto* data = reinterpret_cast<uint8_t*>(&run) + run.io.data_offset;
  for (uint32_t i = 0; i < run.io.count; ++i) {
    std::span<uint8_t> bytes(data + size_t{i} * run.io.size, run.io.size);
    bool claimed = run.io.direction == KVM_EXIT_IO_OUT ? pio_.Write(run.io.port, bytes)
                                                       : pio_.Read(run.io.port, bytes);
    if (!claimed) {
      LogLimited(g_unhandled_io_limiter, LogLevel::kDebug, "vCPU {}: unclaimed port {} {:#x}",
                 vcpu_.id(), run.io.direction == KVM_EXIT_IO_OUT ? "write to" : "read from",
                 run.io.port);
    }
  }
}

void VcpuThread::HandleMmio(kvm_run& run) {
  uint32_t length = std::min<uint32_t>(run.mmio.len, sizeof(run.mmio.data));
  std::span<uint8_t> bytes(run.mmio.data, length);
  bool claimed = run.mmio.is_write ? mmio_.Write(run.mmio.phys_addr, bytes)
                                   : mmio_.Read(run.mmio.phys_addr, bytes);
  if (!claimed) {
    LogLimited(g_unhandled_io_limiter, LogLevel::kDebug, "vCPU {}: unclaimed MMIO {} {:#x}",
               vcpu_.id(), run.mmio.is_write ? "write to" : "read from", run.mmio.phys_addr);
  }
}

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
    if (s.stepped_fwaits > 0) out += fmt::format("; stepped over {} FWAIT", s.stepped_fwaits);
    out += '\n';
  }
  return out;
}

}  // namespace forkvmm
