#include "vmm/host.h"

#include <asm/kvm_para.h>
#include <unistd.h>

#include <fmt/core.h>

namespace forkvmm {
namespace {

using boot::CpuidFeature;
using boot::CpuidRegister;

// Features that made a Linux guest fault or hang under kvm_pvm: the kernel
// enables them at CPL0, where kvm_pvm emulates the instruction or the CR4 bit
// imperfectly. Bisecting which of them are strictly needed was not done; the
// list is the set with which a 6.1 guest booted reliably.
const std::vector<CpuidFeature>& SoftwareHiddenFeatures() {
  static const std::vector<CpuidFeature> features = {
      {0x1, 0, CpuidRegister::kEcx, 17, "pcid"},
      {0x1, 0, CpuidRegister::kEcx, 23, "popcnt"},
      {0x1, 0, CpuidRegister::kEcx, 26, "xsave"},
      {0x1, 0, CpuidRegister::kEcx, 27, "osxsave"},
      {0x1, 0, CpuidRegister::kEcx, 28, "avx"},
      {0x1, 0, CpuidRegister::kEcx, 30, "rdrand"},
      {0x7, 0, CpuidRegister::kEbx, 0, "fsgsbase"},
      {0x7, 0, CpuidRegister::kEbx, 5, "avx2"},
      {0x7, 0, CpuidRegister::kEbx, 7, "smep"},
      {0x7, 0, CpuidRegister::kEbx, 10, "invpcid"},
      {0x7, 0, CpuidRegister::kEbx, 16, "avx512f"},
      {0x7, 0, CpuidRegister::kEbx, 18, "rdseed"},
      {0x7, 0, CpuidRegister::kEbx, 20, "smap"},
      {0x7, 0, CpuidRegister::kEbx, 23, "clflushopt"},
      {0x7, 0, CpuidRegister::kEbx, 24, "clwb"},
      {0x7, 0, CpuidRegister::kEcx, 2, "umip"},
      {0x7, 0, CpuidRegister::kEcx, 22, "rdpid"},
      {0xd, 1, CpuidRegister::kEax, 0, "xsaveopt"},
      {0xd, 1, CpuidRegister::kEax, 1, "xsavec"},
      {0xd, 1, CpuidRegister::kEax, 3, "xsaves"},
      {0x80000001, 0, CpuidRegister::kEdx, 27, "rdtscp"},
  };
  return features;
}

bool ModuleLoaded(const std::string& sysfs_module_dir, const char* name) {
  return access(fmt::format("{}/{}", sysfs_module_dir, name).c_str(), F_OK) == 0;
}

}  // namespace

HostProfile SoftwareVirtualizationProfile(std::string kvm_module) {
  HostProfile profile;
  profile.virtualization = Virtualization::kSoftware;
  profile.kvm_module = std::move(kvm_module);
  profile.hidden_features = SoftwareHiddenFeatures();
  // With these paravirtual features a 2-vCPU guest hung at SMP bring-up
  // under kvm_pvm.
  profile.hidden_kvm_features = (1u << KVM_FEATURE_PV_UNHALT) | (1u << KVM_FEATURE_PV_TLB_FLUSH) |
                                (1u << KVM_FEATURE_PV_SEND_IPI) |
                                (1u << KVM_FEATURE_PV_SCHED_YIELD);
  return profile;
}

HostProfile DetectHost(const std::string& sysfs_module_dir) {
  if (ModuleLoaded(sysfs_module_dir, "kvm_pvm")) return SoftwareVirtualizationProfile("kvm_pvm");
  HostProfile profile;
  if (ModuleLoaded(sysfs_module_dir, "kvm_intel")) {
    profile.virtualization = Virtualization::kHardware;
    profile.kvm_module = "kvm_intel";
  } else if (ModuleLoaded(sysfs_module_dir, "kvm_amd")) {
    profile.virtualization = Virtualization::kHardware;
    profile.kvm_module = "kvm_amd";
  }
  return profile;
}

std::string HostProfile::Describe() const {
  switch (virtualization) {
    case Virtualization::kHardware:
      return fmt::format("host has hardware virtualization ({})", kvm_module);
    case Virtualization::kSoftware: {
      std::string names;
      for (const auto& feature : hidden_features) {
        if (!names.empty()) names += ',';
        names += feature.name;
      }
      return fmt::format(
          "host has software virtualization only ({}): applying its quirks profile: hiding CPU "
          "features {} and the KVM PV unhalt, TLB flush, IPI and sched-yield features",
          kvm_module, names);
    }
    case Virtualization::kUnknown:
      break;
  }
  return "host virtualization kind unknown (no kvm_intel, kvm_amd or kvm_pvm module found)";
}

}  // namespace forkvmm
