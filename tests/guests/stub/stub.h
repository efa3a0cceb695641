/*
 * Internals of the CPL0 stub. Under software virtualization every CPL0
 * instruction is emulated, so stub code does the least it can and leaves the
 * rest to ring 3.
 */
#ifndef FORKVMM_TESTS_GUESTS_STUB_STUB_H
#define FORKVMM_TESTS_GUESTS_STUB_STUB_H

#include <stddef.h>
#include <stdint.h>

#include "abi.h"

#define STUB_PAGE_SIZE 4096u

/* Linker-script symbols bounding the image and its CPL0 part. */
extern char __image_start[], __image_end[], __stub_start[], __stub_end[];

/* The final page-table root (stub/paging.c); APs load it in the trampoline. */
extern uint64_t stub_pml4[512];
extern uint8_t stub_kernel_stacks[RT_MAX_CPUS][RT_KERNEL_STACK_BYTES];

/* Entry points and tables from stub/entry.S and stub/vectors.S. */
extern const char stub_trampoline_start[], stub_trampoline_end[];
extern const uint64_t stub_exception_entries[32];
extern const uint64_t stub_timer_entries[RT_MAX_CPUS];
extern const uint64_t stub_device_irq_entries[RT_DEVICE_IRQS];
void stub_breakpoint_entry(void);
void stub_spurious_entry(void);
__attribute__((noreturn)) void stub_park(void);

/* Fills rt_boot_info from the boot protocol's structure at `info`. */
void stub_read_boot_info(uint32_t protocol, uint64_t info);
/* Builds the final page tables from rt_boot_info and loads CR3. */
void stub_setup_paging(void);
/* Writes bytes to the boot console: the debug device on forkvmm, port 0xe9
 * on PVH. */
void stub_console_write(const char* text, size_t length);
__attribute__((noreturn)) void stub_exit(uint32_t code);

static inline uint8_t stub_inb(uint16_t port) {
  uint8_t value;
  __asm__ volatile("inb %1, %0" : "=a"(value) : "Nd"(port));
  return value;
}

static inline void stub_outb(uint16_t port, uint8_t value) {
  __asm__ volatile("outb %0, %1" : : "a"(value), "Nd"(port));
}

static inline uint64_t stub_rdmsr(uint32_t msr) {
  uint32_t low, high;
  __asm__ volatile("rdmsr" : "=a"(low), "=d"(high) : "c"(msr));
  return ((uint64_t)high << 32) | low;
}

static inline void stub_wrmsr(uint32_t msr, uint64_t value) {
  __asm__ volatile("wrmsr" : : "c"(msr), "a"((uint32_t)value), "d"((uint32_t)(value >> 32)));
}

static inline void stub_cpuid(uint32_t leaf, uint32_t* eax, uint32_t* ebx, uint32_t* ecx,
                              uint32_t* edx) {
  __asm__ volatile("cpuid" : "=a"(*eax), "=b"(*ebx), "=c"(*ecx), "=d"(*edx) : "a"(leaf), "c"(0));
}

static inline uint32_t stub_mmio_read32(uint64_t address) {
  return *(volatile uint32_t*)address;
}

static inline void stub_mmio_write32(uint64_t address, uint32_t value) {
  *(volatile uint32_t*)address = value;
}

static inline uint32_t stub_lapic_read(uint32_t offset) {
  return stub_mmio_read32(RT_LAPIC_ADDRESS + offset);
}

static inline void stub_lapic_write(uint32_t offset, uint32_t value) {
  stub_mmio_write32(RT_LAPIC_ADDRESS + offset, value);
}

#endif
