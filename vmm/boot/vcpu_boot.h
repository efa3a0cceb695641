// Initial vCPU register state for the Linux 64-bit boot protocol.
#pragma once

#include <cstdint>

#include "vmm/base/result.h"
#include "vmm/kvm/kvm.h"

namespace forkvmm::boot {

// Puts the bootstrap vCPU in 64-bit mode at `entry`, with interrupts off,
// the boot GDT and identity page tables loaded, and RSI pointing at the
// zero page. The GDT and page tables must already be in guest RAM.
Status SetupBootstrapVcpu(kvm::KvmVcpu& vcpu, uint64_t entry);

// State every vCPU gets: MSRs, FPU control words, LAPIC LINT0 as ExtINT and
// LINT1 as NMI. Application processors keep KVM's reset state otherwise and
// wait for the guest's INIT and startup IPIs.
Status SetupCommonVcpuState(kvm::KvmVcpu& vcpu);

}  // namespace forkvmm::boot
