// Just enough of the i8042 keyboard controller for a guest to reset the
// machine: command 0xfe on port 0x64 pulses the CPU reset line. forkvmm ends
// the VM when that happens, which is how its Linux guests power off
// (`reboot=k`, and `reboot -f` from userspace) since there is no ACPI.
#pragma once

#include <functional>

#include "devices/bus.h"

namespace forkvmm::devices {

class I8042 : public BusDevice {
 public:
  // The I/O ports the device occupies, from kBasePort.
  static constexpr uint64_t kBasePort = 0x60;
  static constexpr uint64_t kPortCount = 5;  // 0x60 data .. 0x64 status/command

  // `on_reset` runs on the vCPU thread that wrote the reset command.
  explicit I8042(std::function<void()> on_reset) : on_reset_(std::move(on_reset)) {}

  void Read(uint64_t offset, std::span<uint8_t> data) override;
  void Write(uint64_t offset, std::span<const uint8_t> data) override;

 private:
  std::function<void()> on_reset_;
};

}  // namespace forkvmm::devices
