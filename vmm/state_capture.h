// Captures KVM vCPU and VM state into plain structs and restores it into
// newly created KVM objects. Used by fork (the child rebuilds its VM on the
// inherited guest RAM) and by snapshots.
//
// Capture requires the vCPUs to be parked outside KVM_RUN.
#pragma once

#include <cstdint>
#include <vector>

#include "snapshot/vm_state.h"
#include "vmm/base/result.h"
#include "vmm/kvm/kvm.h"

namespace forkvmm {

// The MSRs to save for every vCPU: KVM's list of MSRs to save and emulate
// (KVM_GET_MSR_INDEX_LIST), with the TSC moved before the TSC deadline so a
// restore sets them in a valid order.
Result<std::vector<uint32_t>> MsrsToSave(const kvm::KvmSystem& system);

Result<snapshot::VcpuState> CaptureVcpu(const kvm::KvmVcpu& vcpu,
                                        const std::vector<uint32_t>& msr_indices,
                                        const kvm::CpuidEntries& cpuid);

// Restores `state` into a new vCPU, in the order KVM needs: CPUID, MP state,
// registers, special registers (mode and paging) before the LAPIC, the LAPIC
// before MSRs (the TSC deadline needs the LAPIC timer mode), events last.
Status RestoreVcpu(kvm::KvmVcpu& vcpu, const snapshot::VcpuState& state);

Result<snapshot::IrqchipState> CaptureIrqchip(const kvm::KvmVm& vm);
Status RestoreIrqchip(kvm::KvmVm& vm, const snapshot::IrqchipState& state);

}  // namespace forkvmm
