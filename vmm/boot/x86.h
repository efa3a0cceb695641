// x86 architectural constants used to set up vCPUs (Intel SDM vol. 3).
#pragma once

#include <cstdint>

namespace forkvmm::x86 {

inline constexpr uint64_t kCr0ProtectionEnable = 1u << 0;
inline constexpr uint64_t kCr0MonitorCoprocessor = 1u << 1;
inline constexpr uint64_t kCr0ExtensionType = 1u << 4;
inline constexpr uint64_t kCr0NumericError = 1u << 5;
inline constexpr uint64_t kCr0WriteProtect = 1u << 16;
inline constexpr uint64_t kCr0Paging = 1u << 31;
inline constexpr uint64_t kCr4Pae = 1u << 5;
inline constexpr uint64_t kCr4OsFxsr = 1u << 9;
inline constexpr uint64_t kCr4OsXmmExcpt = 1u << 10;
inline constexpr uint64_t kEferSyscall = 1u << 0;
inline constexpr uint64_t kEferLongModeEnable = 1u << 8;
inline constexpr uint64_t kEferLongModeActive = 1u << 10;
inline constexpr uint64_t kEferNoExecute = 1u << 11;

// Page-table entry bits.
inline constexpr uint64_t kPtePresent = 1u << 0;
inline constexpr uint64_t kPteWritable = 1u << 1;
inline constexpr uint64_t kPteUser = 1u << 2;
inline constexpr uint64_t kPteLargePage = 1u << 7;

inline constexpr uint64_t kRflagsReserved = 1u << 1;

// MSRs.
inline constexpr uint32_t kMsrTsc = 0x10;
inline constexpr uint32_t kMsrApicBase = 0x1b;
inline constexpr uint32_t kMsrSysenterCs = 0x174;
inline constexpr uint32_t kMsrSysenterEsp = 0x175;
inline constexpr uint32_t kMsrSysenterEip = 0x176;
inline constexpr uint32_t kMsrMiscEnable = 0x1a0;
inline constexpr uint64_t kMiscEnableFastStrings = 1u << 0;
inline constexpr uint32_t kMsrMtrrDefType = 0x2ff;
inline constexpr uint32_t kMsrPat = 0x277;
inline constexpr uint32_t kMsrTscDeadline = 0x6e0;
inline constexpr uint32_t kMsrEfer = 0xc0000080;
inline constexpr uint32_t kMsrStar = 0xc0000081;
inline constexpr uint32_t kMsrLstar = 0xc0000082;
inline constexpr uint32_t kMsrCstar = 0xc0000083;
inline constexpr uint32_t kMsrSyscallMask = 0xc0000084;
inline constexpr uint32_t kMsrFsBase = 0xc0000100;
inline constexpr uint32_t kMsrGsBase = 0xc0000101;
inline constexpr uint32_t kMsrKernelGsBase = 0xc0000102;
inline constexpr uint32_t kMsrTscAux = 0xc0000103;
// KVM paravirtual MSRs and CPUID bits come from <asm/kvm_para.h>.

// Local APIC register offsets and LVT delivery modes.
inline constexpr uint32_t kApicLvtLint0 = 0x350;
inline constexpr uint32_t kApicLvtLint1 = 0x360;
inline constexpr uint32_t kApicDeliveryModeExtInt = 0x7;
inline constexpr uint32_t kApicDeliveryModeNmi = 0x4;

}  // namespace forkvmm::x86
