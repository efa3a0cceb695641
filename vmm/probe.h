// Probes what this host can do for guests, once per host boot.
#pragma once

#include <string>

#include "vmm/base/result.h"
#include "vmm/host.h"

namespace forkvmm {

struct GuestUserspaceSupport {
  bool supported = false;
  // Why not, in one sentence; empty when supported.
  std::string reason;
  // True when the answer came from the cache of an earlier probe.
  bool cached = false;
};

// Runs the embedded syscall probe guest (vmm/probe/syscall_probe.S) to find
// out whether SYSCALL from guest user mode reaches the guest kernel, which
// an unmodified Linux guest needs to run any userspace. The answer is cached
// in `cache_directory`/probe.json for the current host boot.
Result<GuestUserspaceSupport> ProbeGuestUserspace(const HostProfile& host,
                                                  const std::string& cache_directory);

}  // namespace forkvmm
