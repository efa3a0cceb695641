// Translation of guest virtual addresses through the guest's own page
// tables, for the rare exits where the VMM must read what a vCPU executes.
#pragma once

#include <cstdint>

#include "memory/guest_memory.h"
#include "vmm/base/result.h"

namespace forkvmm::memory {

// The control registers of a vCPU that decide how it translates addresses.
struct PagingState {
  uint64_t cr0 = 0;
  uint64_t cr3 = 0;
  uint64_t cr4 = 0;
  uint64_t efer = 0;
};

// Translates `virtual_address` to a guest-physical address as the vCPU with
// `paging` would: identity without paging, else 4-level or (with CR4.LA57)
// 5-level long-mode paging, with 1 GiB and 2 MiB pages. Reads the tables
// through `memory`'s bounds checks. Fails for a non-present entry, a table
// outside RAM, a non-canonical address and 32-bit paging, which forkvmm
// guests never use. Access rights (user, write, NX) are not checked.
Result<uint64_t> TranslateVirtual(const GuestMemory& memory, const PagingState& paging,
                                  uint64_t virtual_address);

}  // namespace forkvmm::memory
