/*
 * The guest's final page tables: an identity map of RAM and of the four
 * device pages, with the CPL0 part of the image and page 0 kept from ring 3.
 *
 * - First 2 MiB: 4 KiB pages. Page 0 is not present, so a null pointer
 *   faults. The stub's pages are supervisor-only, and every other page is a
 *   user page.
 * - Rest of the first 4 GiB: 2 MiB user pages wherever RAM is.
 * - RAM above 4 GiB: 1 GiB user pages when CPUID reports them, otherwise
 *   2 MiB pages while the pool of page directories lasts.
 * - The 2 MiB pages of the debug device and of the virtio-mmio windows are
 *   user pages, so ring 3 can report through the one and drive the other.
 *   The IOAPIC and LAPIC pages are supervisor-only. All four are uncached.
 * One PML4 entry covers the first 512 GiB; RAM beyond what is mapped is
 * removed from rt_boot_info and counted in unmapped_ram_bytes.
 */
#include "stub.h"

#define PTE_PRESENT 0x1ull
#define PTE_WRITABLE 0x2ull
#define PTE_USER 0x4ull
#define PTE_WRITE_THROUGH 0x8ull
#define PTE_CACHE_DISABLE 0x10ull
#define PTE_LARGE 0x80ull
#define PTE_TABLE (PTE_PRESENT | PTE_WRITABLE | PTE_USER)

#define MIB2 (2ull << 20)
#define GIB (1ull << 30)
/* Page directories for up to 8 GiB of guest-physical space: four for the
 * first 4 GiB, the rest for RAM above 4 GiB without 1 GiB pages. */
#define PAGE_DIRECTORY_POOL 8

uint64_t stub_pml4[512] __attribute__((aligned(4096)));
static uint64_t pdpt[512] __attribute__((aligned(4096)));
static uint64_t directory_pool[PAGE_DIRECTORY_POOL][512] __attribute__((aligned(4096)));
static uint64_t low_table[512] __attribute__((aligned(4096)));
static uint32_t directories_used;
static int gigabyte_pages;

static int cpu_has_gigabyte_pages(void) {
  uint32_t eax, ebx, ecx, edx;
  stub_cpuid(0x80000000, &eax, &ebx, &ecx, &edx);
  if (eax < 0x80000001) return 0;
  stub_cpuid(0x80000001, &eax, &ebx, &ecx, &edx);
  return (edx >> 26) & 1; /* Page1GB */
}

/* Returns the page directory for GiB `gib`, creating it, or 0 when the pool
 * is used up. */
static uint64_t* directory_for(uint64_t gib) {
  if (pdpt[gib] & PTE_PRESENT) return (uint64_t*)(pdpt[gib] & ~0xfffull);
  if (directories_used == PAGE_DIRECTORY_POOL) return 0;
  uint64_t* directory = directory_pool[directories_used++];
  pdpt[gib] = (uint64_t)directory | PTE_TABLE;
  return directory;
}

/* Maps the 2 MiB or 1 GiB page holding `address` and returns the first
 * address past it, or 0 if it cannot be mapped. */
static uint64_t map_page(uint64_t address) {
  uint64_t gib = address / GIB;
  if (gib >= 512) return 0;
  if (address >= 4 * GIB && gigabyte_pages) {
    pdpt[gib] = gib * GIB | PTE_LARGE | PTE_TABLE;
    return (gib + 1) * GIB;
  }
  uint64_t* directory = directory_for(gib);
  if (directory == 0) return 0;
  uint64_t page = address & ~(MIB2 - 1);
  uint64_t index = (address / MIB2) % 512;
  directory[index] = page == 0 ? (uint64_t)low_table | PTE_TABLE : page | PTE_LARGE | PTE_TABLE;
  return page + MIB2;
}

/* Maps one RAM range and clips it to the part that could be mapped. */
static void map_ram(struct rt_ram_range* range) {
  uint64_t address = range->start;
  while (address < range->end) {
    uint64_t next = map_page(address);
    if (next == 0) {
      rt_boot_info.unmapped_ram_bytes += range->end - address;
      range->end = address;
      return;
    }
    address = next;
  }
}

static void map_device(uint64_t address, uint64_t user) {
  uint64_t* directory = directory_for(address / GIB);
  directory[(address / MIB2) % 512] = (address & ~(MIB2 - 1)) | PTE_PRESENT | PTE_WRITABLE |
                                      user | PTE_WRITE_THROUGH | PTE_CACHE_DISABLE | PTE_LARGE;
}

static void fill_low_table(void) {
  uint64_t stub_start = (uint64_t)__stub_start;
  uint64_t stub_end = (uint64_t)__stub_end;
  for (uint64_t i = 1; i < 512; ++i) {
    uint64_t address = i * STUB_PAGE_SIZE;
    int stub_page = address >= stub_start && address < stub_end;
    low_table[i] = address | PTE_PRESENT | PTE_WRITABLE | (stub_page ? 0 : PTE_USER);
  }
}

void stub_setup_paging(void) {
  gigabyte_pages = cpu_has_gigabyte_pages();
  rt_boot_info.gigabyte_pages = (uint32_t)gigabyte_pages;
  stub_pml4[0] = (uint64_t)pdpt | PTE_TABLE;
  /* The first 4 GiB get their directories first, so the device pages always
   * find theirs. */
  for (uint64_t gib = 0; gib < 4; ++gib) directory_for(gib);
  fill_low_table();
  for (uint32_t i = 0; i < rt_boot_info.ram_range_count; ++i) map_ram(&rt_boot_info.ram[i]);
  map_device(RT_DEBUG_DEVICE_ADDRESS, PTE_USER);
  map_device(RT_VIRTIO_MMIO_ADDRESS, PTE_USER);
  map_device(RT_IOAPIC_ADDRESS, 0);
  map_device(RT_LAPIC_ADDRESS, 0);
  __asm__ volatile("mov %0, %%cr3" : : "r"(stub_pml4) : "memory");
}
