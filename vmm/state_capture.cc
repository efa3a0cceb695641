#include "vmm/state_capture.h"

#include <algorithm>

#include <fmt/core.h>

#include "vmm/boot/x86.h"

namespace forkvmm {

Result<std::vector<uint32_t>> MsrsToSave(const kvm::KvmSystem& system) {
  ASSIGN_OR_RETURN(std::vector<uint32_t> indices, system.GetMsrIndexList());
  auto tsc = std::find(indices.begin(), indices.end(), x86::kMsrTsc);
  if (tsc != indices.end()) {
    indices.erase(tsc);
    indices.insert(indices.begin(), x86::kMsrTsc);
  }
  return indices;
}

Result<snapshot::VcpuState> CaptureVcpu(const kvm::KvmVcpu& vcpu,
                                        const std::vector<uint32_t>& msr_indices,
                                        const kvm::CpuidEntries& cpuid) {
  snapshot::VcpuState state;
  state.id = vcpu.id();
  state.cpuid = cpuid;
  ASSIGN_OR_RETURN(state.mp_state, vcpu.GetMpState());
  ASSIGN_OR_RETURN(state.regs, vcpu.GetRegs());
  ASSIGN_OR_RETURN(state.sregs, vcpu.GetSregs());
  ASSIGN_OR_RETURN(state.fpu, vcpu.GetFpu());
  auto xsave = vcpu.GetXsave();
  if (xsave.ok()) state.xsave = *xsave;
  auto xcrs = vcpu.GetXcrs();
  if (xcrs.ok()) state.xcrs = *xcrs;
  ASSIGN_OR_RETURN(state.debug_regs, vcpu.GetDebugRegs());
  ASSIGN_OR_RETURN(state.lapic, vcpu.GetLapic());
  ASSIGN_OR_RETURN(state.events, vcpu.GetEvents());

  // KVM stops reading at the first MSR it cannot read; skip that one and
  // go on, so one unsupported index does not lose the rest.
  std::vector<kvm::MsrEntry> msrs;
  for (uint32_t index : msr_indices) msrs.push_back({index, 0});
  size_t start = 0;
  while (start < msrs.size()) {
    std::span<kvm::MsrEntry> rest(msrs.data() + start, msrs.size() - start);
    ASSIGN_OR_RETURN(size_t read, vcpu.GetMsrs(rest));
    for (size_t i = 0; i < read; ++i) state.msrs.push_back(rest[i]);
    start += read + 1;
  }
  return state;
}

Status RestoreVcpu(kvm::KvmVcpu& vcpu, const snapshot::VcpuState& state) {
  TRY(vcpu.SetCpuid(state.cpuid));
  TRY(vcpu.SetMpState(state.mp_state));
  TRY(vcpu.SetRegs(state.regs));
  TRY(vcpu.SetSregs(state.sregs));
  if (state.xsave) {
    TRY(vcpu.SetXsave(*state.xsave));
  } else {
    TRY(vcpu.SetFpu(state.fpu));
  }
  if (state.xcrs) TRY(vcpu.SetXcrs(*state.xcrs));
  TRY(vcpu.SetDebugRegs(state.debug_regs));
  TRY(vcpu.SetLapic(state.lapic));
  TRY(vcpu.SetMsrs(state.msrs));
  kvm_vcpu_events events = state.events;
  // Restore the SIPI vector, NMI state and interrupt shadow as captured.
  events.flags = KVM_VCPUEVENT_VALID_NMI_PENDING | KVM_VCPUEVENT_VALID_SIPI_VECTOR |
                 KVM_VCPUEVENT_VALID_SHADOW;
  return vcpu.SetEvents(events);
}

Result<snapshot::IrqchipState> CaptureIrqchip(const kvm::KvmVm& vm) {
  snapshot::IrqchipState state;
  ASSIGN_OR_RETURN(state.pic_master, vm.GetIrqchip(KVM_IRQCHIP_PIC_MASTER));
  ASSIGN_OR_RETURN(state.pic_slave, vm.GetIrqchip(KVM_IRQCHIP_PIC_SLAVE));
  ASSIGN_OR_RETURN(state.ioapic, vm.GetIrqchip(KVM_IRQCHIP_IOAPIC));
  return state;
}

Status RestoreIrqchip(kvm::KvmVm& vm, const snapshot::IrqchipState& state) {
  TRY(vm.SetIrqchip(state.pic_master));
  TRY(vm.SetIrqchip(state.pic_slave));
  return vm.SetIrqchip(state.ioapic);
}

}  // namespace forkvmm
