// The CPUID table each vCPU sees: what KVM supports, with the topology of
// this VM filled in and the features of the host's quirks profile hidden.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "vmm/kvm/kvm.h"

namespace forkvmm::boot {

enum class CpuidRegister { kEax, kEbx, kEcx, kEdx };

// One feature bit of one CPUID leaf (Intel SDM vol. 2A, CPUID).
struct CpuidFeature {
  uint32_t function;
  uint32_t index;  // subleaf; ignored for leaves without subleaves
  CpuidRegister reg;
  uint32_t bit;
  const char* name;
};

struct CpuidPolicy {
  uint32_t vcpu_count = 1;
  // Advertise the TSC-deadline timer, which KVM emulates but does not list
  // in KVM_GET_SUPPORTED_CPUID (KVM_CAP_TSC_DEADLINE_TIMER).
  bool tsc_deadline_timer = false;
  // Features to hide from the guest.
  std::vector<CpuidFeature> hidden_features;
  // KVM paravirtual feature bits (KVM_FEATURE_*) to clear in leaf 0x40000001.
  uint32_t hidden_kvm_features = 0;
};

// Returns the CPUID entries for vCPU `vcpu_id`, derived from
// KVM_GET_SUPPORTED_CPUID: APIC ids and topology for `policy.vcpu_count`
// single-threaded cores in one package, the hypervisor bit set, no
// performance-monitoring unit, and the hidden features cleared.
kvm::CpuidEntries BuildGuestCpuid(const kvm::CpuidEntries& supported, uint32_t vcpu_id,
                                  const CpuidPolicy& policy);

// Looks up an entry; nullptr if the table lacks it.
const kvm_cpuid_entry2* FindCpuid(const kvm::CpuidEntries& entries, uint32_t function,
                                  uint32_t index = 0);

}  // namespace forkvmm::boot
