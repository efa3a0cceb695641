// The x86 guest-physical address map that forkvmm gives every VM.
//
// RAM starts at 0. For guests larger than kRamBelowHole, RAM continues above
// 4 GiB so the range [kMmioHoleStart, 4 GiB) stays free for devices: virtio-mmio
// windows, the IOAPIC and the local APIC.
#pragma once

#include <cstdint>
#include <vector>

namespace forkvmm::memory {

inline constexpr uint64_t kKiB = 1024;
inline constexpr uint64_t kMiB = 1024 * kKiB;
inline constexpr uint64_t kGiB = 1024 * kMiB;

inline constexpr uint64_t kMmioHoleStart = 3 * kGiB;
inline constexpr uint64_t kMmioHoleEnd = 4 * kGiB;
inline constexpr uint64_t kRamBelowHole = kMmioHoleStart;

// Virtio-mmio device windows, one page each, from here upwards.
inline constexpr uint64_t kVirtioMmioBase = 0xd000'0000;
inline constexpr uint64_t kVirtioMmioStride = 0x1000;
// The forkvmm debug device (console bytes and exit code) for test guests.
inline constexpr uint64_t kDebugDeviceBase = 0xfeb0'0000;
inline constexpr uint64_t kIoapicBase = 0xfec0'0000;
inline constexpr uint64_t kLapicBase = 0xfee0'0000;

// Smallest and largest guest RAM sizes forkvmm accepts. The upper bound is
// the guest-physical address width KVM and the page tables below support
// comfortably, not a host limit: the host refuses what it cannot back.
inline constexpr uint64_t kMinRamBytes = 16 * kMiB;
inline constexpr uint64_t kMaxRamBytes = 1024 * kGiB;

// One contiguous range of guest RAM.
struct RamRange {
  uint64_t guest_address;
  uint64_t size;
};

// Returns the RAM ranges for a guest of `ram_bytes`: one range below the MMIO
// hole, and a second one from 4 GiB when the guest is larger than 3 GiB.
std::vector<RamRange> RamRangesFor(uint64_t ram_bytes);

}  // namespace forkvmm::memory
