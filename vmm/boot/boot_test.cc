// Unit tests for the boot structures: e820, zero page, page tables, GDT,
// MP table and CPUID filtering.
#include <gtest/gtest.h>

#include <numeric>

#include "memory/guest_memory.h"
#include "vmm/boot/boot_layout.h"
#include "vmm/boot/boot_params.h"
#include "vmm/boot/cpuid.h"
#include "vmm/boot/mptable.h"
#include "vmm/boot/page_tables.h"
#include "vmm/boot/x86.h"

namespace forkvmm::boot {
namespace {

using memory::kGiB;
using memory::kMiB;

memory::GuestMemory MakeMemory(uint64_t bytes) {
  auto memory = memory::GuestMemory::Create({.ram_bytes = bytes});
  EXPECT_TRUE(memory.ok()) << memory.error().message();
  return std::move(memory).value();
}

TEST(E820, SmallGuest) {
  auto memory = MakeMemory(512 * kMiB);
  auto map = BuildE820Map(memory.regions());
  ASSERT_EQ(map.size(), 3u);
  EXPECT_EQ(map[0].address, 0u);
  EXPECT_EQ(map[0].size, kMpTableAddress);
  EXPECT_EQ(map[0].type, kE820Ram);
  EXPECT_EQ(map[1].address, kMpTableAddress);
  EXPECT_EQ(map[1].address + map[1].size, kBaseMemoryEnd);
  EXPECT_EQ(map[1].type, kE820Reserved);
  EXPECT_EQ(map[2].address, kHighMemoryStart);
  EXPECT_EQ(map[2].address + map[2].size, 512 * kMiB);
  EXPECT_EQ(map[2].type, kE820Ram);
}

TEST(E820, LargeGuestHasRamAboveFourGiB) {
  std::vector<memory::Region> regions = {{0, 3 * kGiB, nullptr, 0},
                                         {4 * kGiB, 2 * kGiB, nullptr, 3 * kGiB}};
  auto map = BuildE820Map(regions);
  ASSERT_EQ(map.size(), 4u);
  EXPECT_EQ(map[2].address + map[2].size, 3 * kGiB);
  EXPECT_EQ(map[3].address, 4 * kGiB);
  EXPECT_EQ(map[3].size, 2 * kGiB);
}

LoadedKernel ElfKernel() {
  LoadedKernel kernel;
  kernel.header.cmdline_size = 2048;
  kernel.header.initrd_addr_max = 0x7fffffff;
  return kernel;
}

TEST(BootParams, FieldsFollowBootProtocol) {
  LoadedKernel kernel = ElfKernel();
  auto memory = MakeMemory(64 * kMiB);
  auto e820 = BuildE820Map(memory.regions());
  boot_params params = BuildBootParams(kernel, LoadedInitrd{0x3000000, 0x12345}, e820);
  EXPECT_EQ(params.hdr.type_of_loader, 0xff);
  EXPECT_EQ(params.hdr.cmd_line_ptr, kCommandLineAddress);
  EXPECT_EQ(params.hdr.ramdisk_image, 0x3000000u);
  EXPECT_EQ(params.hdr.ramdisk_size, 0x12345u);
  EXPECT_TRUE(params.hdr.loadflags & LOADED_HIGH);
  ASSERT_EQ(params.e820_entries, 3);
  EXPECT_EQ(params.e820_table[2].addr, kHighMemoryStart);
  EXPECT_EQ(params.e820_table[2].type, kE820Ram);
}

TEST(BootParams, NoInitrdLeavesRamdiskZero) {
  boot_params params = BuildBootParams(ElfKernel(), std::nullopt, {});
  EXPECT_EQ(params.hdr.ramdisk_image, 0u);
  EXPECT_EQ(params.hdr.ramdisk_size, 0u);
  EXPECT_EQ(params.e820_entries, 0);
}

TEST(CommandLine, WrittenWithTerminator) {
  auto memory = MakeMemory(16 * kMiB);
  ASSERT_TRUE(WriteCommandLine("console=ttyS0", ElfKernel(), memory).ok());
  char text[14];
  ASSERT_TRUE(memory.Read(kCommandLineAddress, text, sizeof(text)).ok());
  EXPECT_STREQ(text, "console=ttyS0");
}

TEST(CommandLine, TooLongIsRejected) {
  auto memory = MakeMemory(16 * kMiB);
  std::string too_long(2049, 'a');
  Status status = WriteCommandLine(too_long, ElfKernel(), memory);
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.error().message(),
            "kernel command line is 2049 bytes; this kernel accepts at most 2048");
  EXPECT_TRUE(WriteCommandLine(std::string(2048, 'a'), ElfKernel(), memory).ok());
}

TEST(Gdt, EntriesMatchArchitecturalEncoding) {
  uint64_t gdt[kBootGdtEntries];
  BootGdt(gdt);
  EXPECT_EQ(gdt[0], 0u);
  EXPECT_EQ(gdt[kBootCodeSelector / 8], 0x00af9b000000ffffu);
  EXPECT_EQ(gdt[kBootDataSelector / 8], 0x00cf93000000ffffu);
  EXPECT_EQ(gdt[kBootTssSelector / 8], 0x008f8b000000ffffu);
}

TEST(PageTables, IdentityMapFirstFourGiB) {
  auto memory = MakeMemory(16 * kMiB);
  ASSERT_TRUE(WriteIdentityPageTables(memory).ok());
  auto pml4 = memory.ReadObject<uint64_t>(kPml4Address);
  ASSERT_TRUE(pml4.ok());
  EXPECT_EQ(*pml4 & ~0xfffull, kPdptAddress);
  EXPECT_TRUE(*pml4 & x86::kPtePresent);
  for (uint64_t gib = 0; gib < 4; ++gib) {
    auto pdpte = memory.ReadObject<uint64_t>(kPdptAddress + gib * 8);
    ASSERT_TRUE(pdpte.ok());
    uint64_t directory = *pdpte & ~0xfffull;
    EXPECT_EQ(directory, kPageDirectoryAddress + gib * 0x1000);
    // First and last 2 MiB page of this GiB.
    auto first = memory.ReadObject<uint64_t>(directory);
    auto last = memory.ReadObject<uint64_t>(directory + 511 * 8);
    ASSERT_TRUE(first.ok() && last.ok());
    EXPECT_EQ(*first & ~0xfffull, gib << 30);
    EXPECT_EQ(*last & ~0xfffull, (gib << 30) + 511 * (2 * kMiB));
    EXPECT_TRUE(*last & x86::kPteLargePage);
  }
  auto beyond = memory.ReadObject<uint64_t>(kPdptAddress + 4 * 8);
  ASSERT_TRUE(beyond.ok());
  EXPECT_EQ(*beyond, 0u);
}

uint8_t ByteSum(const std::vector<uint8_t>& bytes) {
  return std::accumulate(bytes.begin(), bytes.end(), uint8_t{0});
}

TEST(MpTable, ChecksumsAndCounts) {
  auto table = BuildMpTable(4);
  ASSERT_TRUE(table.ok()) << table.error().message();
  const auto& pointer = table->floating_pointer;
  const auto& config = table->configuration_table;
  ASSERT_EQ(pointer.size(), 16u);
  EXPECT_EQ(std::string(pointer.begin(), pointer.begin() + 4), "_MP_");
  EXPECT_EQ(ByteSum(pointer), 0);
  uint32_t table_address;
  std::memcpy(&table_address, pointer.data() + 4, 4);
  EXPECT_EQ(table_address, kMpTableAddress);

  EXPECT_EQ(std::string(config.begin(), config.begin() + 4), "PCMP");
  EXPECT_EQ(ByteSum(config), 0);
  uint16_t base_length, entry_count;
  std::memcpy(&base_length, config.data() + 4, 2);
  std::memcpy(&entry_count, config.data() + 34, 2);
  EXPECT_EQ(base_length, config.size());
  // 4 processors, 1 bus, 1 IOAPIC, 16 I/O interrupts, 2 local interrupts.
  EXPECT_EQ(entry_count, 24);
  // The first entry is the bootstrap processor with APIC id 0.
  EXPECT_EQ(config[44], 0);       // processor entry
  EXPECT_EQ(config[45], 0);       // APIC id
  EXPECT_EQ(config[47], 0x3);     // enabled | BSP
  EXPECT_EQ(config[44 + 20 + 3], 0x1);  // second CPU: enabled only
  EXPECT_EQ(config[44 + 3 * 20 + 1], 3);  // fourth CPU: APIC id 3
}

TEST(MpTable, LargestTableFits) {
  auto table = BuildMpTable(kMaxMpTableCpus);
  ASSERT_TRUE(table.ok());
  EXPECT_LE(kMpTableAddress + table->configuration_table.size(), kMpFloatingPointerAddress);
  EXPECT_EQ(ByteSum(table->configuration_table), 0);
}

TEST(MpTable, InvalidCountsAreRejected) {
  auto none = BuildMpTable(0);
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.error().message(), "the MP table describes 1 to 254 CPUs, not 0");
  EXPECT_FALSE(BuildMpTable(kMaxMpTableCpus + 1).ok());
}

kvm_cpuid_entry2 Entry(uint32_t function, uint32_t index, uint32_t eax, uint32_t ebx, uint32_t ecx,
                       uint32_t edx, bool subleaves = false) {
  kvm_cpuid_entry2 entry{};
  entry.function = function;
  entry.index = index;
  entry.flags = subleaves ? KVM_CPUID_FLAG_SIGNIFCANT_INDEX : 0;
  entry.eax = eax;
  entry.ebx = ebx;
  entry.ecx = ecx;
  entry.edx = edx;
  return entry;
}

kvm::CpuidEntries SupportedTable() {
  return {Entry(0x1, 0, 0x806c1, 0x00000800, 0x7ffafbff, 0xbfebfbff),
          Entry(0x7, 0, 0, 0xffffffff, 0xffffffff, 0, true),
          Entry(0x7, 1, 0, 0xffffffff, 0, 0, true),
          Entry(0xa, 0, 0x7300403, 0, 0, 0x603),
          Entry(0xb, 0, 1, 2, 0x100, 5, true),
          Entry(0xb, 1, 4, 8, 0x201, 5, true),
          Entry(0x40000001, 0, 0xffffffff, 0, 0, 0)};
}

TEST(Cpuid, TopologyAndHypervisorBit) {
  CpuidPolicy policy;
  policy.vcpu_count = 4;
  auto entries = BuildGuestCpuid(SupportedTable(), 3, policy);
  const auto* leaf1 = FindCpuid(entries, 0x1);
  ASSERT_NE(leaf1, nullptr);
  EXPECT_EQ(leaf1->ebx >> 24, 3u);
  EXPECT_EQ((leaf1->ebx >> 16) & 0xff, 4u);
  EXPECT_TRUE(leaf1->ecx & (1u << 31));
  const auto* smt = FindCpuid(entries, 0xb, 0);
  const auto* core = FindCpuid(entries, 0xb, 1);
  ASSERT_NE(smt, nullptr);
  ASSERT_NE(core, nullptr);
  EXPECT_EQ(smt->ebx, 1u);
  EXPECT_EQ(smt->edx, 3u);
  EXPECT_EQ(core->eax, 2u);  // 4 CPUs need 2 bits of APIC id
  EXPECT_EQ(core->ebx, 4u);
  EXPECT_EQ((core->ecx >> 8) & 0xff, 2u);
  const auto* pmu = FindCpuid(entries, 0xa);
  ASSERT_NE(pmu, nullptr);
  EXPECT_EQ(pmu->eax, 0u);
}

TEST(Cpuid, TscDeadlineOnlyWhenAvailable) {
  CpuidPolicy policy;
  policy.tsc_deadline_timer = false;
  auto supported = SupportedTable();
  supported[0].ecx &= ~(1u << 24);
  EXPECT_FALSE(FindCpuid(BuildGuestCpuid(supported, 0, policy), 1)->ecx & (1u << 24));
  policy.tsc_deadline_timer = true;
  EXPECT_TRUE(FindCpuid(BuildGuestCpuid(supported, 0, policy), 1)->ecx & (1u << 24));
}

TEST(Cpuid, HiddenFeaturesAreCleared) {
  CpuidPolicy policy;
  policy.hidden_features = {{0x7, 0, CpuidRegister::kEbx, 7, "smep"},
                            {0x7, 0, CpuidRegister::kEcx, 2, "umip"},
                            {0x1, 0, CpuidRegister::kEcx, 30, "rdrand"}};
  policy.hidden_kvm_features = 1u << 11;
  auto entries = BuildGuestCpuid(SupportedTable(), 0, policy);
  const auto* leaf7 = FindCpuid(entries, 0x7, 0);
  const auto* leaf7_1 = FindCpuid(entries, 0x7, 1);
  ASSERT_NE(leaf7, nullptr);
  ASSERT_NE(leaf7_1, nullptr);
  EXPECT_EQ(leaf7->ebx, ~(1u << 7));
  EXPECT_EQ(leaf7->ecx, ~(1u << 2));
  // Subleaf 1 is a different leaf: untouched.
  EXPECT_EQ(leaf7_1->ebx, 0xffffffffu);
  EXPECT_FALSE(FindCpuid(entries, 0x1)->ecx & (1u << 30));
  EXPECT_EQ(FindCpuid(entries, 0x40000001)->eax, ~(1u << 11));
}

}  // namespace
}  // namespace forkvmm::boot
