// The MP configuration table (Intel MultiProcessor Specification 1.4,
// chapter 4) through which a guest without ACPI finds its CPUs, its IOAPIC
// and how ISA interrupts are wired.
#pragma once

#include <cstdint>
#include <vector>

#include "vmm/base/result.h"

namespace forkvmm::boot {

// The largest vCPU count the MP table can describe: APIC ids 0..254, with
// one more id taken by the IOAPIC.
inline constexpr uint32_t kMaxMpTableCpus = 254;
// IOAPIC input pins of KVM's in-kernel IOAPIC.
inline constexpr uint32_t kIoapicPins = 24;

struct MpTable {
  // The 16-byte floating pointer structure, for kMpFloatingPointerAddress.
  std::vector<uint8_t> floating_pointer;
  // The configuration table with its entries, for kMpTableAddress.
  std::vector<uint8_t> configuration_table;
};

// Builds the MP table for `cpu_count` vCPUs. vCPU i gets APIC id i; vCPU 0 is
// the bootstrap processor; the IOAPIC gets id `cpu_count`.
Result<MpTable> BuildMpTable(uint32_t cpu_count);

}  // namespace forkvmm::boot
