#include "memory/layout.h"

#include <algorithm>

namespace forkvmm::memory {

std::vector<RamRange> RamRangesFor(uint64_t ram_bytes) {
  std::vector<RamRange> ranges;
  uint64_t low = std::min(ram_bytes, kRamBelowHole);
  ranges.push_back({0, low});
  if (ram_bytes > low) ranges.push_back({kMmioHoleEnd, ram_bytes - low});
  return ranges;
}

}  // namespace forkvmm::memory
