#include "devices/legacy/debug_device.h"

#include <algorithm>
#include <cstring>

namespace forkvmm::devices {

void DebugDevice::Read(uint64_t, std::span<uint8_t> data) {
  std::fill(data.begin(), data.end(), 0);
}

void DebugDevice::Write(uint64_t offset, std::span<const uint8_t> data) {
  if (data.empty()) return;
  if (offset == kConsoleOffset) {
    if (output_) output_->Write(data.first(1));
  } else if (offset == kExitOffset && on_exit_) {
    uint32_t code = 0;
    std::memcpy(&code, data.data(), std::min(data.size(), sizeof(code)));
    on_exit_(code);
  }
}

}  // namespace forkvmm::devices
