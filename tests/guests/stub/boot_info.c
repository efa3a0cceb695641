/* Reads the memory map and command line from the boot protocol's structure. */
#include "stub.h"

/* struct boot_params offsets (Linux Documentation/arch/x86/zero-page.rst). */
#define BOOT_PARAMS_E820_ENTRIES 0x1e8
#define BOOT_PARAMS_COMMAND_LINE 0x228
#define BOOT_PARAMS_E820_TABLE 0x2d0
#define BOOT_PARAMS_E820_MAX 128
#define E820_ENTRY_BYTES 20
#define E820_TYPE_RAM 1

/* struct hvm_start_info (Xen public/arch-x86/hvm/start_info.h). */
#define PVH_MAGIC 0x336ec578u
#define PVH_COMMAND_LINE 24
#define PVH_MEMMAP 40
#define PVH_MEMMAP_ENTRIES 48
#define PVH_MEMMAP_ENTRY_BYTES 24

static void add_ram(uint64_t address, uint64_t size) {
  if (size == 0) return;
  if (rt_boot_info.ram_range_count == RT_MAX_RAM_RANGES) {
    rt_boot_info.ram_ranges_dropped++;
    return;
  }
  struct rt_ram_range* range = &rt_boot_info.ram[rt_boot_info.ram_range_count++];
  range->start = address;
  range->end = address + size;
}

/* Memory-map entries are packed: 8-byte fields may be misaligned. */
static uint64_t load64(uint64_t address) {
  uint64_t value;
  __builtin_memcpy(&value, (const void*)address, sizeof(value));
  return value;
}

static uint32_t load32(uint64_t address) {
  uint32_t value;
  __builtin_memcpy(&value, (const void*)address, sizeof(value));
  return value;
}

static void read_boot_params(uint64_t params) {
  uint32_t count = *(const uint8_t*)(params + BOOT_PARAMS_E820_ENTRIES);
  if (count > BOOT_PARAMS_E820_MAX) count = BOOT_PARAMS_E820_MAX;
  for (uint32_t i = 0; i < count; ++i) {
    uint64_t entry = params + BOOT_PARAMS_E820_TABLE + i * E820_ENTRY_BYTES;
    if (load32(entry + 16) == E820_TYPE_RAM) add_ram(load64(entry), load64(entry + 8));
  }
  rt_boot_info.command_line = load32(params + BOOT_PARAMS_COMMAND_LINE);
}

static void read_pvh_start_info(uint64_t start_info) {
  if (load32(start_info) != PVH_MAGIC) return;
  rt_boot_info.command_line = load64(start_info + PVH_COMMAND_LINE);
  /* Version 0 has no memory map, so ring 3 reports that it found no RAM. */
  if (load32(start_info + 4) < 1) return;
  uint64_t map = load64(start_info + PVH_MEMMAP);
  uint32_t count = load32(start_info + PVH_MEMMAP_ENTRIES);
  for (uint32_t i = 0; i < count; ++i) {
    uint64_t entry = map + (uint64_t)i * PVH_MEMMAP_ENTRY_BYTES;
    if (load32(entry + 16) == E820_TYPE_RAM) add_ram(load64(entry), load64(entry + 8));
  }
}

void stub_read_boot_info(uint32_t protocol, uint64_t info) {
  rt_boot_info.protocol = protocol;
  rt_boot_info.image_start = (uint64_t)__image_start;
  rt_boot_info.image_end = (uint64_t)__image_end;
  if (protocol == RT_BOOT_FORKVMM) {
    read_boot_params(info);
  } else {
    read_pvh_start_info(info);
  }
}
