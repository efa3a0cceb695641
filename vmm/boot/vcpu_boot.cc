#include "vmm/boot/vcpu_boot.h"

#include <cstring>

#include "vmm/boot/boot_layout.h"
#include "vmm/boot/page_tables.h"
#include "vmm/boot/x86.h"

namespace forkvmm::boot {
namespace {

kvm_segment SegmentFromGdt(uint64_t entry, uint16_t selector) {
  kvm_segment segment{};
  segment.base = ((entry >> 16) & 0xffffff) | (((entry >> 56) & 0xff) << 24);
  uint32_t limit = static_cast<uint32_t>((entry & 0xffff) | (((entry >> 48) & 0xf) << 16));
  segment.g = static_cast<uint8_t>((entry >> 55) & 1);
  // With G=1 the limit counts 4 KiB units; KVM wants it in bytes.
  segment.limit = segment.g ? (limit << 12) | 0xfff : limit;
  segment.selector = selector;
  segment.type = static_cast<uint8_t>((entry >> 40) & 0xf);
  segment.s = static_cast<uint8_t>((entry >> 44) & 1);
  segment.dpl = static_cast<uint8_t>((entry >> 45) & 3);
  segment.present = static_cast<uint8_t>((entry >> 47) & 1);
  segment.avl = static_cast<uint8_t>((entry >> 52) & 1);
  segment.l = static_cast<uint8_t>((entry >> 53) & 1);
  segment.db = static_cast<uint8_t>((entry >> 54) & 1);
  segment.unusable = segment.present ? 0 : 1;
  return segment;
}

Status SetupLongModeSregs(kvm::KvmVcpu& vcpu) {
  ASSIGN_OR_RETURN(kvm_sregs sregs, vcpu.GetSregs());
  uint64_t gdt[kBootGdtEntries];
  BootGdt(gdt);
  sregs.gdt.base = kGdtAddress;
  sregs.gdt.limit = sizeof(gdt) - 1;
  sregs.idt.base = kIdtAddress;
  sregs.idt.limit = 7;
  sregs.cs = SegmentFromGdt(gdt[kBootCodeSelector / 8], kBootCodeSelector);
  kvm_segment data = SegmentFromGdt(gdt[kBootDataSelector / 8], kBootDataSelector);
  sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = data;
  sregs.tr = SegmentFromGdt(gdt[kBootTssSelector / 8], kBootTssSelector);
  sregs.cr0 = x86::kCr0ProtectionEnable | x86::kCr0ExtensionType | x86::kCr0NumericError |
              x86::kCr0Paging;
  sregs.cr3 = kPml4Address;
  sregs.cr4 = x86::kCr4Pae;
  sregs.efer = x86::kEferLongModeEnable | x86::kEferLongModeActive;
  return vcpu.SetSregs(sregs);
}

Status SetupLapic(kvm::KvmVcpu& vcpu) {
  ASSIGN_OR_RETURN(kvm_lapic_state lapic, vcpu.GetLapic());
  auto set_delivery_mode = [&lapic](uint32_t offset, uint32_t mode) {
    uint32_t value;
    std::memcpy(&value, lapic.regs + offset, sizeof(value));
    value = (value & ~0x700u) | (mode << 8);
    std::memcpy(lapic.regs + offset, &value, sizeof(value));
  };
  set_delivery_mode(x86::kApicLvtLint0, x86::kApicDeliveryModeExtInt);
  set_delivery_mode(x86::kApicLvtLint1, x86::kApicDeliveryModeNmi);
  return vcpu.SetLapic(lapic);
}

}  // namespace

Status SetupCommonVcpuState(kvm::KvmVcpu& vcpu) {
  const kvm::MsrEntry msrs[] = {
      {x86::kMsrSysenterCs, 0},
      {x86::kMsrSysenterEsp, 0},
      {x86::kMsrSysenterEip, 0},
      {x86::kMsrStar, 0},
      {x86::kMsrCstar, 0},
      {x86::kMsrKernelGsBase, 0},
      {x86::kMsrSyscallMask, 0},
      {x86::kMsrLstar, 0},
      {x86::kMsrMiscEnable, x86::kMiscEnableFastStrings},
      // MTRRs enabled (bit 11) with write-back (6) as the default type.
      {x86::kMsrMtrrDefType, (1u << 11) | 6},
  };
  TRY(vcpu.SetMsrs(msrs));
  kvm_fpu fpu{};
  fpu.fcw = 0x37f;
  fpu.mxcsr = 0x1f80;
  TRY(vcpu.SetFpu(fpu));
  return SetupLapic(vcpu);
}

Status SetupBootstrapVcpu(kvm::KvmVcpu& vcpu, uint64_t entry) {
  TRY(SetupLongModeSregs(vcpu));
  kvm_regs regs{};
  regs.rflags = x86::kRflagsReserved;
  regs.rip = entry;
  regs.rsp = kBootStackTop;
  regs.rbp = kBootStackTop;
  regs.rsi = kBootParamsAddress;
  return vcpu.SetRegs(regs);
}

}  // namespace forkvmm::boot
