/*
 * cpuid: prints the CPUID feature leaves that forkvmm's host quirks profile
 * edits, as the guest reads them from ring 3, then exits with 0. The boot
 * benchmark runs it under forkvmm and under QEMU to check that both give
 * the guest the same features.
 *
 * Output, one line per leaf:
 *   cpuid: leaf <leaf>.<subleaf> eax=<hex> ebx=<hex> ecx=<hex> edx=<hex>
 */
#include "runtime.h"

const char rt_guest_name[] = "cpuid";

struct leaf {
  uint32_t function;
  uint32_t index;
};

static const struct leaf kLeaves[] = {
    {0x1, 0}, {0x7, 0}, {0xd, 1}, {0x80000001, 0}, {0x40000000, 0}, {0x40000001, 0},
};

int main(void) {
  for (size_t i = 0; i < sizeof(kLeaves) / sizeof(kLeaves[0]); ++i) {
    uint32_t eax, ebx, ecx, edx;
    __asm__ volatile("cpuid"
                     : "=a"(eax), "=b"(ebx), "=c"(ecx), "=d"(edx)
                     : "a"(kLeaves[i].function), "c"(kLeaves[i].index));
    /* Leaf 1 EBX carries the APIC ID and CLFLUSH size, which may differ;
     * only the feature bits matter here. */
    if (kLeaves[i].function == 0x1) ebx = 0;
    rt_printf("cpuid: leaf 0x%x.%u eax=0x%08x ebx=0x%08x ecx=0x%08x edx=0x%08x\n",
              kLeaves[i].function, kLeaves[i].index, eax, ebx, ecx, edx);
  }
  return RT_EXIT_PASS;
}
