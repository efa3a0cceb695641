// Loads a Linux kernel (bzImage or uncompressed vmlinux ELF) and an initrd
// into guest RAM, following the Linux x86 boot protocol
// (Documentation/x86/boot.rst, protocol 2.12 and later for the 64-bit entry).
//
// Both files are untrusted input: every offset and size is checked against the
// file and against guest RAM before anything is copied.
#pragma once

#include <asm/bootparam.h>

#include <cstdint>
#include <string>

#include "memory/guest_memory.h"
#include "vmm/base/result.h"

namespace forkvmm::boot {

enum class KernelFormat { kElf, kBzImage };

struct LoadedKernel {
  KernelFormat format = KernelFormat::kElf;
  // Guest-physical address of the 64-bit entry point.
  uint64_t entry = 0;
  // The setup header to place in boot_params: the file's own for a bzImage,
  // one built by the loader for an ELF kernel.
  setup_header header{};
  // One past the highest guest-physical byte the kernel needs at boot,
  // including its decompression and bss space (init_size for a bzImage).
  uint64_t end = 0;
};

struct LoadedInitrd {
  uint64_t address = 0;
  uint64_t size = 0;
};

// Loads the kernel at `path` into `memory`. A bzImage's protected-mode part
// goes to its preferred address; an ELF kernel's PT_LOAD segments go to their
// physical addresses.
Result<LoadedKernel> LoadKernel(const std::string& path, memory::GuestMemory& memory);

// Loads the initrd at the highest page-aligned address that lies above the
// kernel, inside low RAM and below the kernel's initrd_addr_max.
Result<LoadedInitrd> LoadInitrd(const std::string& path, const LoadedKernel& kernel,
                                memory::GuestMemory& memory);

}  // namespace forkvmm::boot
