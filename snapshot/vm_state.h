// The state of a paused VM as plain data: what fork hands to a child and
// what a snapshot file stores. No pointers and no live objects; every field
// is a value KVM or a device model produced and can take back.
//
// The KVM structs follow Documentation/virt/kvm/api.rst; kvm_xsave is stored
// in its C layout (vmm/kvm/kvm_abi.h) because the C++ view of the UAPI
// header is the wrong size.
#pragma once

#include <linux/kvm.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "devices/legacy/serial.h"
#include "devices/virtio/mmio_transport.h"
#include "vmm/kvm/kvm.h"

namespace forkvmm::snapshot {

struct VcpuState {
  uint32_t id = 0;
  kvm::CpuidEntries cpuid;
  kvm_mp_state mp_state{};
  kvm_regs regs{};
  kvm_sregs sregs{};
  kvm_fpu fpu{};
  std::optional<kvm::abi::Xsave> xsave;
  std::optional<kvm_xcrs> xcrs;
  kvm_debugregs debug_regs{};
  kvm_lapic_state lapic{};
  std::vector<kvm::MsrEntry> msrs;
  kvm_vcpu_events events{};
};

struct IrqchipState {
  kvm_irqchip pic_master{};
  kvm_irqchip pic_slave{};
  kvm_irqchip ioapic{};
};

// The machine shape that a restore must reproduce exactly.
struct MachineConfig {
  uint64_t ram_bytes = 0;
  uint32_t vcpu_count = 0;
  bool has_pit = false;
};

struct VmState {
  MachineConfig machine;
  std::vector<VcpuState> vcpus;
  IrqchipState irqchip;
  std::optional<kvm_pit_state2> pit;
  kvm_clock_data clock{};
  devices::SerialState serial;
  // One per disk, in the order of VmConfig::disks.
  std::vector<devices::virtio::MmioTransportState> disks;
};

}  // namespace forkvmm::snapshot
