// The boot GDT and identity page tables that put the boot vCPU in 64-bit
// mode at the kernel's entry point.
#pragma once

#include <cstdint>

#include "memory/guest_memory.h"
#include "vmm/base/result.h"

namespace forkvmm::boot {

// GDT selectors. The Linux 64-bit boot protocol requires __BOOT_CS = 0x10
// and __BOOT_DS = 0x18, both flat; 0x20 is the TSS the CPU needs loaded in
// long mode.
inline constexpr uint16_t kBootCodeSelector = 0x10;
inline constexpr uint16_t kBootDataSelector = 0x18;
inline constexpr uint16_t kBootTssSelector = 0x20;

// Builds a GDT entry from its parts (Intel SDM vol. 3, 3.4.5).
uint64_t GdtEntry(uint16_t flags, uint32_t base, uint32_t limit);

// The boot GDT: null, null, 64-bit code, data, TSS.
inline constexpr int kBootGdtEntries = 5;
void BootGdt(uint64_t (&gdt)[kBootGdtEntries]);

// Identity-maps the first 4 GiB of guest-physical space with 2 MiB pages
// (PML4 -> one PDPT -> four page directories), so the kernel, the zero page,
// the command line and the MMIO hole are all reachable at entry.
Status WriteIdentityPageTables(memory::GuestMemory& memory);

}  // namespace forkvmm::boot
