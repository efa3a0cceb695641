#include "vmm/host.h"

#include <asm/kvm_para.h>
#include <unistd.h>

#include <optional>

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
      // The kernel's SLUB allocator uses CMPXCHG16B at CPL0, which kvm_pvm's
      // instruction emulator rejects (KVM_EXIT_INTERNAL_ERROR, emulation).
      {0x1, 0, CpuidRegister::kEcx, 13, "cx16"},
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
      {0x7, 0, CpuidRegister::kEdx, 29, "arch_capabilities"},
      {0xd, 1, CpuidRegister::kEax, 0, "xsaveopt"},
      {0xd, 1, CpuidRegister::kEax, 1, "xsavec"},
      {0xd, 1, CpuidRegister::kEax, 3, "xsaves"},
      {0x80000001, 0, CpuidRegister::kEdx, 27, "rdtscp"},
  };
  return features;
}

// Linux's capability word for a CPUID register (arch/x86/include/asm/
// cpufeatures.h in Linux 6.1): X86_FEATURE_x = word * 32 + bit.
std::optional<uint32_t> LinuxCapabilityWord(const CpuidFeature& feature) {
  struct Word {
    uint32_t function, index;
    CpuidRegister reg;
    uint32_t word;
  };
  static constexpr Word kWords[] = {
      {0x1, 0, CpuidRegister::kEdx, 0},        {0x80000001, 0, CpuidRegister::kEdx, 1},
      {0x1, 0, CpuidRegister::kEcx, 4},        {0x80000001, 0, CpuidRegister::kEcx, 6},
      {0x7, 0, CpuidRegister::kEbx, 9},        {0xd, 1, CpuidRegister::kEax, 10},
      {0x7, 0, CpuidRegister::kEcx, 16},       {0x7, 0, CpuidRegister::kEdx, 18},
  };
  for (const Word& word : kWords) {
    if (word.function == feature.function && word.index == feature.index &&
        word.reg == feature.reg) {
      return word.word;
    }
  }
  return std::nullopt;
}

// Kernel parameters that make a Linux guest leave the hidden features alone:
// kvm_pvm passes CPUID bits that KVM does not report as supported straight
// from the host, so hiding them in the CPUID table alone is not enough
// (seen: XSAVE, POPCNT, AVX and RDRAND still set in leaf 1).
std::string LinuxParametersHiding(const std::vector<CpuidFeature>& features) {
  // X86_FEATURE_LFENCE_RDTSC (3*32+18 in Linux 6.1) is no CPUID bit: Linux
  // derives it from the CPU model. With it, rdtsc_ordered() and
  // barrier_nospec() execute LFENCE at CPL0, which kvm_pvm fails to emulate
  // (kvm_emulate_insn reports "failed" for 0f ae e8) and handles on a slow
  // path; clocksource reads in timer interrupts did this often enough that
  // a 2-vCPU guest spent all its time in its timer interrupts.
  std::string numbers = std::to_string(3 * 32 + 18);
  for (const CpuidFeature& feature : features) {
    std::optional<uint32_t> word = LinuxCapabilityWord(feature);
    if (!word) continue;
    numbers += ',' + std::to_string(*word * 32 + feature.bit);
  }
  return "noxsave clearcpuid=" + numbers;
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
  // Every instruction of a guest timer interrupt is emulated here, so under
  // host load a 2-vCPU Linux guest spent all its time in timer interrupts
  // (seen at a load average of 6, stuck after "NET: Registered
  // PF_NETLINK"). These parameters make each tick cheaper: the tick leaves
  // the hrtimer machinery (highres=off), skips steal-time reads
  // (no-steal-acc), has no lockup watchdog timers (nowatchdog), and the
  // vCPUs tick at different moments (skew_tick=1). RCU stall warnings are
  // suppressed: at emulation speed they are expected and printing their
  // backtraces costs minutes.
  profile.extra_kernel_parameters =
      LinuxParametersHiding(profile.hidden_features) +
      " highres=off no-steal-acc nowatchdog skew_tick=1 rcupdate.rcu_cpu_stall_suppress=1";
  // kvm_pvm reported "INTERNAL_ERROR in batch emul" at the FWAIT in Linux's
  // fpu__drop(), which runs at every task exit, now and then during boot.
  profile.step_over_failed_fwait = true;
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
          "features {} and the KVM PV unhalt, TLB flush, IPI and sched-yield features, stepping "
          "over FWAITs that the instruction emulator fails on; Linux guests also get \"{}\"",
          kvm_module, names, extra_kernel_parameters);
    }
    case Virtualization::kUnknown:
      break;
  }
  return "host virtualization kind unknown (no kvm_intel, kvm_amd or kvm_pvm module found)";
}

}  // namespace forkvmm
