// The thread that runs one vCPU: enters the guest with KVM_RUN, dispatches
// port I/O and MMIO exits to the buses, and parks when RunControl asks.
#pragma once

#include <pthread.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <string>
#include <thread>
#include <vector>

#include "devices/bus.h"
#include "memory/guest_memory.h"
#include "vmm/kvm/kvm.h"
#include "vmm/run_control.h"

namespace forkvmm {

// Exit counts and where the time went, for one vCPU.
struct VcpuStats {
  static constexpr size_t kReasons = 64;
  std::array<uint64_t, kReasons> exits_by_reason{};
  uint64_t interrupted_runs = 0;   // KVM_RUN returned EINTR (pause, signal)
  uint64_t guest_nanoseconds = 0;  // inside KVM_RUN
  uint64_t vmm_nanoseconds = 0;    // handling exits in userspace
  uint64_t stepped_fwaits = 0;     // see VcpuThread::StepOverFailedFwait
};

class VcpuThread {
 public:
  // With `fwait_memory` (guest RAM), an FWAIT that KVM's emulator failed
  // on is stepped over instead of ending the VM; pass nullptr where KVM
  // emulates it (HostProfile::step_over_failed_fwait).
  VcpuThread(kvm::KvmVcpu& vcpu, const devices::Bus& pio, const devices::Bus& mmio,
             RunControl& control, const memory::GuestMemory* fwait_memory = nullptr)
      : vcpu_(vcpu), pio_(pio), mmio_(mmio), control_(control), fwait_memory_(fwait_memory) {}
  VcpuThread(const VcpuThread&) = delete;
  VcpuThread& operator=(const VcpuThread&) = delete;
  ~VcpuThread() { Join(); }

  // Installs the no-op handler of the signal that kicks vCPUs out of
  // KVM_RUN. Call once per process before starting vCPU threads.
  static void InstallKickSignalHandler();

  void Start();
  // Interrupts KVM_RUN. Safe from any thread; does nothing before Start().
  void Kick();
  void Join();
  VcpuStats stats() const;

 private:
  void Loop();
  // Handles the exit in kvm_run; returns false when the vCPU must stop.
  bool HandleExit();
  void HandlePortIo(kvm_run& run);
  void HandleMmio(kvm_run& run);
  // Returns true after moving RIP past an FWAIT that KVM's emulator failed
  // on, false if the instruction at RIP is something else.
  Result<bool> StepOverFailedFwait();
  void Fail(std::string message);

  kvm::KvmVcpu& vcpu_;
  const devices::Bus& pio_;
  const devices::Bus& mmio_;
  RunControl& control_;
  const memory::GuestMemory* fwait_memory_;
  std::thread thread_;
  std::atomic<pthread_t> native_handle_{};
  std::atomic<bool> started_{false};
  mutable std::mutex stats_mutex_;
  VcpuStats stats_;
};

// Formats per-vCPU statistics for humans, one line per vCPU.
std::string FormatVcpuStats(const std::vector<VcpuStats>& stats);

}  // namespace forkvmm
