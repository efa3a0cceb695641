/*
 * memtest: writes an address-derived pattern over all free guest RAM from
 * ring 3, then reads it all back. Free RAM is every RAM range of the boot
 * memory map minus page 0 and the loaded image (see rt_free_ranges), so the
 * test covers RAM below 1 MiB, up to the MMIO hole and above 4 GiB.
 *
 * Every 8-byte word gets a value no other word gets, so two guest addresses
 * backed by the same host memory show up as mismatches, as do lost writes.
 *
 * Output on success:
 *   memtest: RAM <bytes> bytes in <n> ranges
 *   memtest: range 0x<start>-0x<end>: <bytes> bytes   (one line per free range)
 *   memtest: PASS: tested <bytes> bytes, skipped <bytes> bytes of runtime pages, 0 mismatches
 */
#include "runtime.h"

const char rt_guest_name[] = "memtest";

#define MAX_RANGES (RT_MAX_RAM_RANGES + 4)
#define MISMATCHES_SHOWN 8

/* A bijection on 64-bit words, so the pattern never repeats. */
static inline uint64_t pattern(uint64_t address) {
  return (address * 0x9e3779b97f4a7c15ull) ^ 0xa5a5a5a5a5a5a5a5ull;
}

static void fill(uint64_t start, uint64_t end) {
  for (uint64_t address = start; address < end; address += 8) {
    *(volatile uint64_t*)address = pattern(address);
  }
}

/* Returns the mismatches in [start, end) and prints the first few of all
 * ranges; `reported` is the count from earlier ranges. */
static uint64_t verify(uint64_t start, uint64_t end, uint64_t reported) {
  uint64_t mismatches = 0;
  for (uint64_t address = start; address < end; address += 8) {
    uint64_t value = *(volatile uint64_t*)address;
    if (value == pattern(address)) continue;
    if (reported + mismatches < MISMATCHES_SHOWN) {
      rt_printf("memtest: mismatch at 0x%lx: read 0x%lx, expected 0x%lx\n", address, value,
                pattern(address));
    }
    ++mismatches;
  }
  return mismatches;
}

int main(void) {
  struct rt_ram_range ram[MAX_RANGES];
  size_t ram_count = rt_ram_ranges(ram, MAX_RANGES);
  uint64_t ram_bytes = rt_ram_bytes();
  rt_printf("memtest: RAM %lu bytes in %zu ranges\n", ram_bytes, ram_count);
  if (ram_count == 0) rt_fail("the boot memory map lists no RAM");
  if (rt_boot_info.ram_ranges_dropped != 0 || rt_boot_info.unmapped_ram_bytes != 0) {
    rt_fail("%u memory-map entries dropped and %lu RAM bytes left unmapped",
            rt_boot_info.ram_ranges_dropped, rt_boot_info.unmapped_ram_bytes);
  }

  struct rt_ram_range free[MAX_RANGES];
  size_t free_count = rt_free_ranges(free, MAX_RANGES);
  uint64_t tested = 0;
  for (size_t i = 0; i < free_count; ++i) {
    /* Only whole words are tested, and a partial word at either end counts
     * as skipped. */
    free[i].start = (free[i].start + 7) & ~UINT64_C(7);
    free[i].end &= ~UINT64_C(7);
    if (free[i].end <= free[i].start) continue;
    rt_printf("memtest: range 0x%lx-0x%lx: %lu bytes\n", free[i].start, free[i].end,
              free[i].end - free[i].start);
    fill(free[i].start, free[i].end);
    tested += free[i].end - free[i].start;
  }
  uint64_t mismatches = 0;
  for (size_t i = 0; i < free_count; ++i) {
    if (free[i].end > free[i].start) mismatches += verify(free[i].start, free[i].end, mismatches);
  }

  if (mismatches != 0) {
    rt_fail("tested %lu bytes, %lu mismatches", tested, mismatches);
  }
  rt_printf("memtest: PASS: tested %lu bytes, skipped %lu bytes of runtime pages, 0 mismatches\n",
            tested, ram_bytes - tested);
  return RT_EXIT_PASS;
}
