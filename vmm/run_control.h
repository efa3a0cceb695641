// Coordinates the vCPU threads of one VM: run, pause at a safe point, stop.
//
// A vCPU is at a safe point when it is outside KVM_RUN with its last exit
// fully handled, so its registers can be read and devices see no
// half-finished access. Pause() returns once every vCPU is parked there.
//
// KVM finishes an I/O or MMIO exit only when the vCPU next enters KVM_RUN
// (the KVM API documentation's note on KVM_EXIT_IO and KVM_EXIT_MMIO):
// until then, after an IN, RIP still points at the instruction and RAX
// lacks its result. A vCPU therefore completes such an exit with one
// KVM_RUN that has immediate_exit set before it parks (the `before_park`
// callback), so a fork child does not execute the instruction again.
//
// NOTE: a fork child can still skip an INT3 that the guest executed just
// before the pause, and it then goes on with RAX unchanged. Under kvm_pvm,
// the fork_probe children that read a stray 0x02 byte from the UART were
// all captured at CPL 3, with RIP just past the INT3 of the stub's
// port-read call. RAX still held that call's number, 2. KVM_GET_VCPU_EVENTS
// reported no exception there because it leaves queued software exceptions
// out, expecting RIP to still point at the instruction, but an INT3 traps
// with RIP past it. A KVM_RUN with a signal already pending did not deliver
// the #BP in those captures either, although KVM processed a pending
// KVM_REQ_EVENT in it, so a fix probably needs a real guest entry before
// the vCPU parks.
//
// Thread safety: all methods are safe from any thread.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <vector>

namespace forkvmm {

// Why a VM stopped.
struct VmExit {
  enum class Reason {
    kGuestReset,      // the guest reset the machine (its way to power off)
    kGuestExitCode,   // a test guest wrote the debug device's exit register
    kShutdown,        // triple fault
    kError,           // KVM or device failure
    kHostRequest,     // kill, quit, or a signal to the VMM
  };
  Reason reason = Reason::kHostRequest;
  int status = 0;  // the process exit status this stop maps to
  std::string message;
};

class RunControl {
 public:
  enum class Request { kRun, kPause, kStop };

  // `kick` interrupts vCPU i: sets its immediate_exit flag and signals its
  // thread. Called with the internal lock held.
  RunControl(size_t vcpu_count, std::function<void(size_t)> kick)
      : vcpu_count_(vcpu_count), kick_(std::move(kick)) {}

  // --- vCPU thread side ---

  // Called by vCPU `index` before each KVM_RUN. Parks while a pause is
  // requested, after calling `before_park` (without the lock) if it is set.
  // Returns false when the vCPU must stop; otherwise calls
  // `clear_exit_request` under the lock, so a concurrent Pause() cannot be
  // lost between this check and KVM_RUN.
  bool WaitUntilRunnable(size_t index, const std::function<void()>& clear_exit_request,
                         const std::function<void()>& before_park = nullptr);

  // --- controller side ---

  // Makes the vCPUs park as soon as they start, for a VM that starts paused.
  // Call before the vCPU threads start.
  void PauseBeforeStart();

  // Requests a pause and waits until every vCPU thread is parked or has
  // exited. Returns false if the VM stopped meanwhile.
  bool Pause();
  void Resume();
  // Requests a stop with `exit` (the first request wins) and wakes
  // everything. Safe from vCPU threads.
  void Stop(VmExit exit);
  bool stopped() const;
  // Blocks until Stop() is called and returns its VmExit.
  VmExit WaitForStop();
  // Called by a vCPU thread as it leaves its loop.
  void VcpuExited();
  // Registers a callback run once, on the stopping thread, when Stop() is
  // first called (the main loop uses it to wake up).
  void OnStop(std::function<void()> callback);

 private:
  void KickAll();

  mutable std::mutex mutex_;
  std::condition_variable changed_;
  const size_t vcpu_count_;
  std::function<void(size_t)> kick_;
  std::function<void()> on_stop_;
  Request request_ = Request::kRun;
  size_t parked_ = 0;
  size_t exited_ = 0;
  bool stop_requested_ = false;
  VmExit exit_;
};

}  // namespace forkvmm
