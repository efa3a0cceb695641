#include "devices/bus.h"

#include <algorithm>
#include <cstring>

#include <fmt/core.h>

namespace forkvmm::devices {

Status Bus::Register(uint64_t base, uint64_t length, std::shared_ptr<BusDevice> device) {
  if (length == 0 || base + length < base) {
    return Error(fmt::format("{} bus: invalid range {:#x}+{:#x}", name_, base, length));
  }
  for (const Range& range : ranges_) {
    if (base < range.base + range.length && range.base < base + length) {
      return Error(fmt::format("{} bus: range {:#x}+{:#x} overlaps {:#x}+{:#x}", name_, base,
                               length, range.base, range.length));
    }
  }
  ranges_.push_back({base, length, std::move(device)});
  std::sort(ranges_.begin(), ranges_.end(),
            [](const Range& a, const Range& b) { return a.base < b.base; });
  return Ok();
}

const Bus::Range* Bus::Find(uint64_t address, uint64_t size) const {
  auto it = std::upper_bound(ranges_.begin(), ranges_.end(), address,
                             [](uint64_t value, const Range& range) { return value < range.base; });
  if (it == ranges_.begin()) return nullptr;
  const Range& range = *std::prev(it);
  uint64_t offset = address - range.base;
  if (offset >= range.length || size > range.length - offset) return nullptr;
  return &range;
}

bool Bus::Read(uint64_t address, std::span<uint8_t> data) const {
  const Range* range = Find(address, data.size());
  if (range == nullptr) {
    std::memset(data.data(), 0xff, data.size());
    return false;
  }
  range->device->Read(address - range->base, data);
  return true;
}

bool Bus::Write(uint64_t address, std::span<const uint8_t> data) const {
  const Range* range = Find(address, data.size());
  if (range == nullptr) return false;
  range->device->Write(address - range->base, data);
  return true;
}

}  // namespace forkvmm::devices
