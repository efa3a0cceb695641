#include "devices/legacy/i8042.h"

#include <algorithm>

namespace forkvmm::devices {
namespace {

constexpr uint64_t kCommandOffset = 4;  // port 0x64
constexpr uint8_t kCommandPulseReset = 0xfe;

}  // namespace

void I8042::Read(uint64_t, std::span<uint8_t> data) {
  // Status 0: output buffer empty, input buffer empty, so a guest polling
  // before a command never waits.
  std::fill(data.begin(), data.end(), 0);
}

void I8042::Write(uint64_t offset, std::span<const uint8_t> data) {
  if (offset == kCommandOffset && !data.empty() && data[0] == kCommandPulseReset && on_reset_) {
    on_reset_();
  }
}

}  // namespace forkvmm::devices
