// Address-range dispatch of guest port I/O and MMIO exits to device models.
//
// Devices are registered before the vCPUs start and the range table is
// immutable afterwards, so lookups take no lock; each device serializes its
// own state.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "vmm/base/result.h"

namespace forkvmm::devices {

// A device reachable through a bus. Offsets are relative to the start of the
// device's range; `data` holds 1 to 8 bytes, little-endian.
class BusDevice {
 public:
  virtual ~BusDevice() = default;
  virtual void Read(uint64_t offset, std::span<uint8_t> data) = 0;
  virtual void Write(uint64_t offset, std::span<const uint8_t> data) = 0;
};

class Bus {
 public:
  explicit Bus(std::string name) : name_(std::move(name)) {}

  // Adds `device` at [base, base + length). Fails if the range is empty,
  // wraps around, or overlaps a registered range.
  Status Register(uint64_t base, uint64_t length, std::shared_ptr<BusDevice> device);

  // Dispatches an access; returns false if no device covers [address,
  // address + size). An unclaimed read fills `data` with 0xff, as an
  // unconnected ISA bus reads.
  bool Read(uint64_t address, std::span<uint8_t> data) const;
  bool Write(uint64_t address, std::span<const uint8_t> data) const;

 private:
  struct Range {
    uint64_t base;
    uint64_t length;
    std::shared_ptr<BusDevice> device;
  };
  const Range* Find(uint64_t address, uint64_t size) const;

  std::string name_;
  std::vector<Range> ranges_;  // sorted by base
};

// An interrupt line into the guest's interrupt controller.
class IrqLine {
 public:
  virtual ~IrqLine() = default;
  // Sends one edge-triggered interrupt.
  virtual void Trigger() = 0;
};

// Where a device writes bytes meant for the host (console output).
class ByteSink {
 public:
  virtual ~ByteSink() = default;
  virtual void Write(std::span<const uint8_t> bytes) = 0;
};

}  // namespace forkvmm::devices
