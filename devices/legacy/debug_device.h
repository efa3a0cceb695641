// The forkvmm debug device, through which test guests report to the VMM.
//
// It appears twice: as I/O port 0xe9 (one byte of console output per write,
// like QEMU's debugcon) and as one MMIO page at memory::kDebugDeviceBase,
// which works from guest user mode, where port I/O may fault:
//   offset 0x00, write: one byte of console output;
//   offset 0x08, write: 4-byte exit code; the VM stops with that status.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>

#include "devices/bus.h"

namespace forkvmm::devices {

class DebugDevice : public BusDevice {
 public:
  static constexpr uint64_t kConsolePort = 0xe9;
  static constexpr uint64_t kMmioSize = 0x1000;
  static constexpr uint64_t kConsoleOffset = 0x00;
  static constexpr uint64_t kExitOffset = 0x08;

  // `on_exit` runs on the vCPU thread that wrote the exit register.
  DebugDevice(std::shared_ptr<ByteSink> output, std::function<void(uint32_t)> on_exit)
      : output_(std::move(output)), on_exit_(std::move(on_exit)) {}

  void Read(uint64_t offset, std::span<uint8_t> data) override;
  void Write(uint64_t offset, std::span<const uint8_t> data) override;
  void SetOutput(std::shared_ptr<ByteSink> output) { output_ = std::move(output); }

 private:
  std::shared_ptr<ByteSink> output_;
  std::function<void(uint32_t)> on_exit_;
};

}  // namespace forkvmm::devices
