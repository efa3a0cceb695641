// The zero page (struct boot_params) and e820 memory map handed to a Linux
// kernel at its 64-bit entry point (Documentation/x86/boot.rst and
// Documentation/x86/zero-page.rst).
#pragma once

#include <asm/bootparam.h>

#include <optional>
#include <string>
#include <vector>

#include "memory/guest_memory.h"
#include "vmm/base/result.h"
#include "vmm/boot/kernel_loader.h"

namespace forkvmm::boot {

inline constexpr uint32_t kE820Ram = 1;
inline constexpr uint32_t kE820Reserved = 2;

struct E820Entry {
  uint64_t address = 0;
  uint64_t size = 0;
  uint32_t type = 0;
};

// Describes guest RAM: usable base memory up to the MP table, the MP table
// area reserved, the legacy hole (0xa0000-0x100000) left out, then RAM from
// 1 MiB and, for large guests, from 4 GiB.
std::vector<E820Entry> BuildE820Map(const std::vector<memory::Region>& regions);

// Writes the NUL-terminated command line at kCommandLineAddress. Fails if it
// is longer than the kernel accepts (cmdline_size of its setup header).
Status WriteCommandLine(const std::string& command_line, const LoadedKernel& kernel,
                        memory::GuestMemory& memory);

// Builds the zero page for `kernel` with the command line written by
// WriteCommandLine and an optional initrd.
boot_params BuildBootParams(const LoadedKernel& kernel, const std::optional<LoadedInitrd>& initrd,
                            const std::vector<E820Entry>& e820);

}  // namespace forkvmm::boot
