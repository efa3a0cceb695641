/*
 * The ring-3 API of the forkvmm test-guest runtime.
 *
 * A guest defines `int main(void)`, which runs in ring 3 on the BSP with
 * interrupts enabled, and whose return value becomes the exit code. Console
 * output goes to the forkvmm debug device (one MMIO exit per byte) or, on the
 * PVH path under QEMU, to port 0xe9 through the stub. Everything that needs
 * CPL0 (port I/O, APIC registers, HLT) is a call into the stub through INT3.
 */
#ifndef FORKVMM_TESTS_GUESTS_RUNTIME_H
#define FORKVMM_TESTS_GUESTS_RUNTIME_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "abi.h"

int main(void);
/* The guest's name, which prefixes the runtime's own messages. */
extern const char rt_guest_name[];

/* Calls the stub (RT_CALL_* in abi.h). */
static inline uint64_t rt_call(uint64_t number, uint64_t arg0, uint64_t arg1, uint64_t arg2) {
  uint64_t result;
  __asm__ volatile("int3"
                   : "=a"(result)
                   : "a"(number), "D"(arg0), "S"(arg1), "d"(arg2)
                   : "memory");
  return result;
}

static inline void rt_pause(void) { __asm__ volatile("pause" : : : "memory"); }

/* Console. Lines from different CPUs do not interleave: rt_printf holds a
 * lock while it writes. Output longer than 255 bytes is truncated. */
void rt_write(const char* text, size_t length);
int rt_printf(const char* format, ...) __attribute__((format(printf, 1, 2)));
int rt_vsnprintf(char* buffer, size_t size, const char* format, va_list args);
int rt_snprintf(char* buffer, size_t size, const char* format, ...)
    __attribute__((format(printf, 3, 4)));

/* Stops the VM with `code`: through the debug device on forkvmm, through
 * QEMU's isa-debug-exit on the PVH path. */
__attribute__((noreturn)) void rt_exit(int code);
/* Prints "<rt_guest_name>: FAIL: <message>" and exits with RT_EXIT_FAIL. */
__attribute__((noreturn, format(printf, 1, 2))) void rt_fail(const char* format, ...);

/* The index of the calling CPU (its local APIC ID). */
unsigned rt_cpu_id(void);
/* The command line from the boot protocol, or "" if there is none. */
const char* rt_command_line(void);
/* Returns the number in "name=value" (decimal or 0x-prefixed) on the command
 * line, or `fallback` when the name is absent or its value is not a number. */
uint64_t rt_command_line_value(const char* name, uint64_t fallback);

/* Memory. RAM ranges are sorted and merged. Free ranges are RAM minus page 0,
 * the loaded image (stub, ring-3 code, stacks, page tables) and the AP
 * trampoline page once installed: the memory a guest may overwrite. Both
 * return the number of ranges written to `out`, at most `capacity`. */
size_t rt_ram_ranges(struct rt_ram_range* out, size_t capacity);
size_t rt_free_ranges(struct rt_ram_range* out, size_t capacity);
uint64_t rt_ram_bytes(void);

/* Time from kvmclock. Without kvmclock, rt_now_ns() returns 0 and the
 * functions that wait fail the guest with RT_EXIT_UNSUPPORTED. */
bool rt_clock_available(void);
uint64_t rt_now_ns(void);
void rt_delay_ns(uint64_t nanoseconds);

/* Port I/O and APIC access, performed by the stub. */
uint8_t rt_inb(uint16_t port);
void rt_outb(uint16_t port, uint8_t value);
uint32_t rt_lapic_read(uint32_t offset);
void rt_lapic_write(uint32_t offset, uint32_t value);
uint32_t rt_ioapic_read(uint32_t index);
void rt_ioapic_write(uint32_t index, uint32_t value);
/* Routes IOAPIC input `irq` (edge-triggered, active high) to vector
 * RT_VECTOR_DEVICE_IRQ_BASE + irq on CPU `cpu`. rt_irq_counts[irq] counts its
 * interrupts. */
void rt_ioapic_route(unsigned irq, unsigned cpu);
/* Writes bytes to the 16550 UART at port 0x3f8, polling its line status. */
void rt_serial_write(const char* text, size_t length);
/* Returns the next byte the UART has received, or -1 if none is waiting.
 * Costs one stub call, and a second one when a byte is waiting. */
int rt_serial_read(void);

/* Halts until the next interrupt. */
void rt_wait_for_interrupt(void);

/* The LAPIC timer. rt_timer_start() starts it in periodic mode at `hz` on the
 * calling CPU, calibrating the timer against kvmclock the first time (a
 * 10 ms wait). Each interrupt increments that CPU's tick counter. */
uint64_t rt_lapic_timer_frequency(void);
void rt_timer_start(uint32_t hz);
void rt_timer_stop(void);
/* Ticks of the calling CPU's timer. */
uint64_t rt_ticks(void);

/* SMP. rt_cpu_count() returns the number of enabled processors in the MP
 * table (1 if there is none). rt_smp_start() starts every AP with INIT and
 * startup IPIs. Each AP runs `ap_main(cpu)` in ring 3 and halts if it
 * returns. rt_smp_start() returns the number of APs online within 2 s. */
unsigned rt_cpu_count(void);
unsigned rt_smp_start(void (*ap_main)(unsigned cpu));
extern volatile uint32_t rt_cpu_online[RT_MAX_CPUS];

/* Freestanding replacements for the C library functions the compiler may
 * call. */
void* memset(void* destination, int value, size_t length);
void* memcpy(void* destination, const void* source, size_t length);
int memcmp(const void* a, const void* b, size_t length);
size_t strlen(const char* text);

#endif
