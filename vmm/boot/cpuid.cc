#include "vmm/boot/cpuid.h"

#include <asm/kvm_para.h>

#include <bit>

namespace forkvmm::boot {
namespace {

constexpr uint32_t kLeaf1EcxTscDeadline = 1u << 24;
constexpr uint32_t kLeaf1EcxHypervisor = 1u << 31;
constexpr uint32_t kLeaf1EdxHtt = 1u << 28;
// Leaf 0xb level types (bits 15:8 of ECX).
constexpr uint32_t kLevelTypeSmt = 1;
constexpr uint32_t kLevelTypeCore = 2;

uint32_t* Register(kvm_cpuid_entry2& entry, CpuidRegister reg) {
  switch (reg) {
    case CpuidRegister::kEax: return &entry.eax;
    case CpuidRegister::kEbx: return &entry.ebx;
    case CpuidRegister::kEcx: return &entry.ecx;
    case CpuidRegister::kEdx: return &entry.edx;
  }
  return &entry.eax;
}

bool HasSubleaves(const kvm_cpuid_entry2& entry) {
  return (entry.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX) != 0;
}

// Bits needed to hold ids 0..count-1 (the APIC-id shift of leaf 0xb).
uint32_t IdBits(uint32_t count) {
  return count <= 1 ? 0 : static_cast<uint32_t>(std::bit_width(count - 1));
}

void SetTopology(kvm_cpuid_entry2& entry, uint32_t vcpu_id, uint32_t vcpu_count) {
  switch (entry.function) {
    case 0x1:
      // EBX[31:24] initial APIC id, EBX[23:16] logical processors per package.
      entry.ebx = (vcpu_id << 24) | ((vcpu_count & 0xff) << 16) | (entry.ebx & 0xffff);
      if (vcpu_count > 1) entry.edx |= kLeaf1EdxHtt;
      break;
    case 0x4:
      // EAX[31:26] cores per package - 1, EAX[25:14] threads sharing the
      // cache - 1 (one thread per core).
      entry.eax = (entry.eax & 0x3fff) | ((vcpu_count - 1) << 26);
      break;
    case 0xb:
      // Extended topology: level 0 is SMT (1 thread), level 1 is the cores.
      entry.edx = vcpu_id;
      if (entry.index == 0) {
        entry.eax = 0;
        entry.ebx = 1;
        entry.ecx = (kLevelTypeSmt << 8) | entry.index;
      } else if (entry.index == 1) {
        entry.eax = IdBits(vcpu_count);
        entry.ebx = vcpu_count;
        entry.ecx = (kLevelTypeCore << 8) | entry.index;
      } else {
        entry.eax = entry.ebx = 0;
        entry.ecx = entry.index;
      }
      break;
    default:
      break;
  }
}

}  // namespace

const kvm_cpuid_entry2* FindCpuid(const kvm::CpuidEntries& entries, uint32_t function,
                                  uint32_t index) {
  for (const auto& entry : entries) {
    if (entry.function == function && (!HasSubleaves(entry) || entry.index == index)) {
      return &entry;
    }
  }
  return nullptr;
}

kvm::CpuidEntries BuildGuestCpuid(const kvm::CpuidEntries& supported, uint32_t vcpu_id,
                                  const CpuidPolicy& policy) {
  kvm::CpuidEntries entries = supported;
  for (auto& entry : entries) {
    SetTopology(entry, vcpu_id, policy.vcpu_count);
    switch (entry.function) {
      case 0x1:
        entry.ecx |= kLeaf1EcxHypervisor;
        if (policy.tsc_deadline_timer) entry.ecx |= kLeaf1EcxTscDeadline;
        break;
      case 0xa:
        // No virtual PMU: the guest must not program counters KVM may not
        // virtualize on every host.
        entry.eax = entry.ebx = entry.ecx = entry.edx = 0;
        break;
      case KVM_CPUID_FEATURES:
        entry.eax &= ~policy.hidden_kvm_features;
        break;
      default:
        break;
    }
    for (const CpuidFeature& feature : policy.hidden_features) {
      if (entry.function != feature.function) continue;
      if (HasSubleaves(entry) && entry.index != feature.index) continue;
      *Register(entry, feature.reg) &= ~(1u << feature.bit);
    }
  }
  return entries;
}

}  // namespace forkvmm::boot
