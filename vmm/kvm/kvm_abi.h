// C-layout versions of the KVM structs that end in a flexible array.
//
// Linux 6.1's UAPI headers declare those arrays with __DECLARE_FLEX_ARRAY,
// whose empty struct occupies a byte in C++ but none in C. Compiled as C++,
// kvm_cpuid2, kvm_msrs, kvm_msr_list and kvm_xsave therefore get the wrong
// size and entry offsets, and the ioctl numbers built from their sizes are
// wrong too (KVM answers EINVAL). These headers and request numbers follow
// the C layout of Documentation/virt/kvm/api.rst.
#pragma once

#include <linux/kvm.h>

#include <cstdint>

namespace forkvmm::kvm::abi {

// struct kvm_cpuid2: kvm_cpuid_entry2 entries follow at offset 8.
struct CpuidHeader {
  uint32_t nent;
  uint32_t padding;
};
// struct kvm_msrs: kvm_msr_entry entries follow at offset 8.
struct MsrsHeader {
  uint32_t nmsrs;
  uint32_t pad;
};
// struct kvm_msr_list: uint32_t indices follow at offset 4.
struct MsrListHeader {
  uint32_t nmsrs;
};
// struct kvm_xsave without its flexible tail (used only by KVM_GET_XSAVE2).
struct Xsave {
  uint32_t region[1024];
};
static_assert(sizeof(CpuidHeader) == 8 && sizeof(MsrsHeader) == 8 && sizeof(MsrListHeader) == 4);
static_assert(sizeof(Xsave) == 4096);
static_assert(sizeof(kvm_cpuid_entry2) == 40 && sizeof(kvm_msr_entry) == 16);

inline constexpr unsigned long kGetMsrIndexList = _IOWR(KVMIO, 0x02, MsrListHeader);
inline constexpr unsigned long kGetSupportedCpuid = _IOWR(KVMIO, 0x05, CpuidHeader);
inline constexpr unsigned long kGetMsrs = _IOWR(KVMIO, 0x88, MsrsHeader);
inline constexpr unsigned long kSetMsrs = _IOW(KVMIO, 0x89, MsrsHeader);
inline constexpr unsigned long kSetCpuid2 = _IOW(KVMIO, 0x90, CpuidHeader);
inline constexpr unsigned long kGetXsave = _IOR(KVMIO, 0xa4, Xsave);
inline constexpr unsigned long kSetXsave = _IOW(KVMIO, 0xa5, Xsave);

}  // namespace forkvmm::kvm::abi
