#include "vmm/boot/mptable.h"

#include <cstring>
#include <numeric>

#include <fmt/core.h>

#include "memory/layout.h"
#include "vmm/boot/boot_layout.h"

namespace forkvmm::boot {
namespace {

// MP spec 1.4, section 4.1.
struct [[gnu::packed]] FloatingPointer {
  char signature[4];  // "_MP_"
  uint32_t table_address;
  uint8_t length;  // in 16-byte units
  uint8_t spec_revision;
  uint8_t checksum;
  uint8_t features[5];
};
static_assert(sizeof(FloatingPointer) == 16);

// Section 4.2.
struct [[gnu::packed]] TableHeader {
  char signature[4];  // "PCMP"
  uint16_t base_length;
  uint8_t spec_revision;
  uint8_t checksum;
  char oem_id[8];
  char product_id[12];
  uint32_t oem_table;
  uint16_t oem_table_size;
  uint16_t entry_count;
  uint32_t lapic_address;
  uint16_t extended_length;
  uint8_t extended_checksum;
  uint8_t reserved;
};
static_assert(sizeof(TableHeader) == 44);

// Section 4.3.1.
struct [[gnu::packed]] ProcessorEntry {
  uint8_t type;  // 0
  uint8_t lapic_id;
  uint8_t lapic_version;
  uint8_t flags;  // bit 0 enabled, bit 1 bootstrap processor
  uint32_t signature;
  uint32_t feature_flags;
  uint32_t reserved[2];
};
static_assert(sizeof(ProcessorEntry) == 20);

// Section 4.3.2.
struct [[gnu::packed]] BusEntry {
  uint8_t type;  // 1
  uint8_t bus_id;
  char bus_type[6];
};
static_assert(sizeof(BusEntry) == 8);

// Section 4.3.3.
struct [[gnu::packed]] IoapicEntry {
  uint8_t type;  // 2
  uint8_t ioapic_id;
  uint8_t version;
  uint8_t flags;  // bit 0 enabled
  uint32_t address;
};
static_assert(sizeof(IoapicEntry) == 8);

// Sections 4.3.4 (type 3, I/O interrupt) and 4.3.5 (type 4, local interrupt).
struct [[gnu::packed]] InterruptEntry {
  uint8_t type;
  uint8_t interrupt_type;  // 0 INT, 1 NMI, 2 SMI, 3 ExtINT
  uint16_t flags;          // 0: polarity and trigger conform to the bus
  uint8_t source_bus;
  uint8_t source_irq;
  uint8_t destination_id;  // IOAPIC id, or 0xff for all local APICs
  uint8_t destination_pin;
};
static_assert(sizeof(InterruptEntry) == 8);

constexpr uint8_t kInterruptInt = 0;
constexpr uint8_t kInterruptNmi = 1;
constexpr uint8_t kInterruptExtInt = 3;
constexpr uint8_t kLapicVersion = 0x14;
constexpr uint8_t kIoapicVersion = 0x11;
// Family 6 signature and the FPU/APIC feature flags; Linux reads them only
// for display.
constexpr uint32_t kCpuSignature = 0x600;
constexpr uint32_t kCpuFeatures = 0x201;

// The largest configuration table must fit below the floating pointer.
static_assert(sizeof(TableHeader) + kMaxMpTableCpus * sizeof(ProcessorEntry) + 8 + 8 + 18 * 8 <=
              kMpFloatingPointerAddress - kMpTableAddress);

template <typename T>
void Append(std::vector<uint8_t>& out, const T& value) {
  const auto* bytes = reinterpret_cast<const uint8_t*>(&value);
  out.insert(out.end(), bytes, bytes + sizeof(T));
}

// The byte that makes all bytes of [begin, end) sum to zero modulo 256.
uint8_t Checksum(const uint8_t* begin, const uint8_t* end) {
  uint8_t sum = std::accumulate(begin, end, uint8_t{0});
  return static_cast<uint8_t>(-sum);
}

}  // namespace

Result<MpTable> BuildMpTable(uint32_t cpu_count) {
  if (cpu_count == 0 || cpu_count > kMaxMpTableCpus) {
    return Error(fmt::format("the MP table describes 1 to {} CPUs, not {}", kMaxMpTableCpus,
                             cpu_count));
  }
  const uint8_t ioapic_id = static_cast<uint8_t>(cpu_count);
  std::vector<uint8_t> entries;
  uint16_t entry_count = 0;
  for (uint32_t cpu = 0; cpu < cpu_count; ++cpu) {
    ProcessorEntry processor{};
    processor.lapic_id = static_cast<uint8_t>(cpu);
    processor.lapic_version = kLapicVersion;
    processor.flags = static_cast<uint8_t>(cpu == 0 ? 0x3 : 0x1);
    processor.signature = kCpuSignature;
    processor.feature_flags = kCpuFeatures;
    Append(entries, processor);
    ++entry_count;
  }
  BusEntry bus{1, 0, {'I', 'S', 'A', ' ', ' ', ' '}};
  Append(entries, bus);
  ++entry_count;
  IoapicEntry ioapic{2, ioapic_id, kIoapicVersion, 1, static_cast<uint32_t>(memory::kIoapicBase)};
  Append(entries, ioapic);
  ++entry_count;
  // KVM's default routing sends GSI n to IOAPIC pin n, so ISA IRQ n is pin n.
  for (uint8_t pin = 0; pin < 16; ++pin) {
    Append(entries, InterruptEntry{3, kInterruptInt, 0, 0, pin, ioapic_id, pin});
    ++entry_count;
  }
  Append(entries, InterruptEntry{4, kInterruptExtInt, 0, 0, 0, 0xff, 0});
  Append(entries, InterruptEntry{4, kInterruptNmi, 0, 0, 0, 0xff, 1});
  entry_count += 2;

  TableHeader header{};
  std::memcpy(header.signature, "PCMP", 4);
  header.base_length = static_cast<uint16_t>(sizeof(TableHeader) + entries.size());
  header.spec_revision = 4;
  std::memcpy(header.oem_id, "FORKVMM ", 8);
  std::memcpy(header.product_id, "000000000000", 12);
  header.entry_count = entry_count;
  header.lapic_address = static_cast<uint32_t>(memory::kLapicBase);

  MpTable table;
  Append(table.configuration_table, header);
  table.configuration_table.insert(table.configuration_table.end(), entries.begin(),
                                   entries.end());
  std::vector<uint8_t>& config = table.configuration_table;
  config[offsetof(TableHeader, checksum)] = Checksum(config.data(), config.data() + config.size());

  FloatingPointer pointer{};
  std::memcpy(pointer.signature, "_MP_", 4);
  pointer.table_address = static_cast<uint32_t>(kMpTableAddress);
  pointer.length = 1;
  pointer.spec_revision = 4;
  Append(table.floating_pointer, pointer);
  std::vector<uint8_t>& floating = table.floating_pointer;
  floating[offsetof(FloatingPointer, checksum)] =
      Checksum(floating.data(), floating.data() + floating.size());
  return table;
}

}  // namespace forkvmm::boot
