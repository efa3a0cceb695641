#include "memory/page_walk.h"

#include <fmt/core.h>

namespace forkvmm::memory {
namespace {

// Bits of control registers and page-table entries (Intel SDM vol. 3,
// chapters 2 and 4).
constexpr uint64_t kCr0Paging = 1ull << 31;
constexpr uint64_t kCr4La57 = 1ull << 12;
constexpr uint64_t kEferLongModeActive = 1ull << 10;
constexpr uint64_t kEntryPresent = 1ull << 0;
constexpr uint64_t kEntryPageSize = 1ull << 7;
// Bits 51:12 of an entry: the next table or the page frame.
constexpr uint64_t kEntryAddressMask = 0x000f'ffff'ffff'f000ull;

}  // namespace

Result<uint64_t> TranslateVirtual(const GuestMemory& memory, const PagingState& paging,
                                  uint64_t virtual_address) {
  if (!(paging.cr0 & kCr0Paging)) return virtual_address;
  if (!(paging.efer & kEferLongModeActive)) {
    return Error(fmt::format("cannot translate {:#x}: the vCPU uses 32-bit paging",
                             virtual_address));
  }
  const int levels = (paging.cr4 & kCr4La57) ? 5 : 4;
  // Canonical: the bits above the top translated bit copy that bit.
  const int top_bit = 12 + 9 * levels - 1;
  const auto upper = static_cast<int64_t>(virtual_address) >> top_bit;
  if (upper != 0 && upper != -1) {
    return Error(fmt::format("cannot translate {:#x}: the address is not canonical",
                             virtual_address));
  }

  uint64_t table = paging.cr3 & kEntryAddressMask;
  for (int level = levels; level >= 1; --level) {
    const int shift = 12 + 9 * (level - 1);
    const uint64_t index = (virtual_address >> shift) & 0x1ff;
    ASSIGN_OR_RETURN(uint64_t entry, memory.ReadObject<uint64_t>(table + index * 8));
    if (!(entry & kEntryPresent)) {
      return Error(fmt::format("cannot translate {:#x}: not present at page-table level {}",
                               virtual_address, level));
    }
    // Levels 3 and 2 may map a 1 GiB or 2 MiB page directly.
    if ((level == 3 || level == 2) && (entry & kEntryPageSize)) {
      const uint64_t page_mask = (1ull << shift) - 1;
      return ((entry & kEntryAddressMask) & ~page_mask) | (virtual_address & page_mask);
    }
    table = entry & kEntryAddressMask;
  }
  return table | (virtual_address & 0xfff);
}

}  // namespace forkvmm::memory
