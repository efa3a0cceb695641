// Runs a VM in the current process until it stops: the main thread's event
// loop handles signals and console input while the vCPU threads run.
#pragma once

#include <string>

#include "vmm/base/result.h"
#include "vmm/vm.h"

namespace forkvmm {

struct RunOptions {
  // Forward this process's stdin to the guest's serial port.
  bool attach_stdin = true;
  // Print exit counts and time split per vCPU when the VM stops.
  bool print_stats = false;
};

// Starts `vm` and returns when it stops, with the reason. SIGINT, SIGTERM and
// SIGHUP stop the VM; on a terminal, Ctrl-A x does too.
Result<VmExit> RunVm(Vm& vm, const RunOptions& options);

// Formats the per-vCPU statistics for humans.
std::string FormatVcpuStats(const std::vector<VcpuStats>& stats);

}  // namespace forkvmm
