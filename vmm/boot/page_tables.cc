#include "vmm/boot/page_tables.h"

#include "vmm/boot/boot_layout.h"
#include "vmm/boot/x86.h"

namespace forkvmm::boot {

uint64_t GdtEntry(uint16_t flags, uint32_t base, uint32_t limit) {
  return ((uint64_t{base} & 0xff000000u) << (56 - 24)) | ((uint64_t{flags} & 0x0000f0ffu) << 40) |
         ((uint64_t{limit} & 0x000f0000u) << (48 - 16)) |
         ((uint64_t{base} & 0x00ffffffu) << 16) | (uint64_t{limit} & 0x0000ffffu);
}

void BootGdt(uint64_t (&gdt)[kBootGdtEntries]) {
  gdt[0] = 0;
  gdt[1] = 0;
  // 0xa09b: present, DPL 0, code, execute/read, accessed, L=1 (64-bit), G=1.
  gdt[2] = GdtEntry(0xa09b, 0, 0xfffff);
  // 0xc093: present, DPL 0, data, read/write, accessed, D/B=1, G=1.
  gdt[3] = GdtEntry(0xc093, 0, 0xfffff);
  // 0x808b: present, 64-bit busy TSS, G=1.
  gdt[4] = GdtEntry(0x808b, 0, 0xfffff);
}

Status WriteIdentityPageTables(memory::GuestMemory& memory) {
  constexpr uint64_t kTableFlags = x86::kPtePresent | x86::kPteWritable;
  TRY(memory.WriteObject<uint64_t>(kPml4Address, kPdptAddress | kTableFlags));
  for (uint64_t gib = 0; gib < 4; ++gib) {
    uint64_t directory = kPageDirectoryAddress + gib * 0x1000;
    TRY(memory.WriteObject<uint64_t>(kPdptAddress + gib * 8, directory | kTableFlags));
    uint64_t entries[512];
    for (uint64_t i = 0; i < 512; ++i) {
      uint64_t address = (gib << 30) + (i << 21);
      entries[i] = address | kTableFlags | x86::kPteLargePage;
    }
    TRY(memory.Write(directory, entries, sizeof(entries)));
  }
  return Ok();
}

}  // namespace forkvmm::boot
