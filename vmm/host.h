// What kind of virtualization this host offers, and the quirks profile that
// follows from it.
//
// On hosts with hardware virtualization (kvm_intel, kvm_amd) the guest gets
// what KVM reports as supported. On hosts without it (kvm_pvm, which runs
// the guest kernel deprivileged and emulates its privileged instructions)
// several CPU features make a Linux guest fault early or hang, so the
// software-virtualization profile hides them.
#pragma once

#include <string>
#include <vector>

#include "vmm/boot/cpuid.h"

namespace forkvmm {

enum class Virtualization { kHardware, kSoftware, kUnknown };

struct HostProfile {
  Virtualization virtualization = Virtualization::kUnknown;
  // The KVM module that provides /dev/kvm ("kvm_intel", "kvm_pvm", ...).
  std::string kvm_module;
  // CPUID features the guest must not see on this host.
  std::vector<boot::CpuidFeature> hidden_features;
  // KVM_FEATURE_* bits the guest must not see on this host.
  uint32_t hidden_kvm_features = 0;
  // Extra kernel command-line parameters the guest needs on this host.
  std::string extra_kernel_parameters;
  // Step over an FWAIT that KVM's instruction emulator failed on, instead
  // of ending the VM (see VcpuThread).
  bool step_over_failed_fwait = false;

  // One line for the start-up log: the host kind and what the profile does.
  std::string Describe() const;
};

// Inspects /sys/module for the loaded KVM module. `sysfs_module_dir` is
// settable for tests.
HostProfile DetectHost(const std::string& sysfs_module_dir = "/sys/module");

// The profile applied to hosts without hardware virtualization.
HostProfile SoftwareVirtualizationProfile(std::string kvm_module);

}  // namespace forkvmm
