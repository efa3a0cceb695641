/*
 * dirty: a guest for the fork benchmark. It first writes every 4 KiB page of
 * free RAM once, so that host memory backs all of guest RAM, and prints a
 * ready line. Then it keeps writing one 8-byte word per page over the first
 * `dirty.wss_mb=N` MiB of free RAM (default 16), pass after pass, forever.
 * With dirty.wss_mb=0 it goes idle instead: it halts between the ticks of a
 * 10 Hz LAPIC timer, touching only its own stack and tick counter.
 *
 * All of this runs in ring 3, where kvm_pvm runs guest code natively.
 *
 * Output:
 *   dirty: touched <bytes> bytes in <n> ranges; dirtying <bytes> bytes
 *   dirty: ready
 */
#include "runtime.h"

const char rt_guest_name[] = "dirty";

#define MAX_RANGES (RT_MAX_RAM_RANGES + 4)
#define PAGE_SIZE 4096u
#define DEFAULT_WORKING_SET_MB 16
#define IDLE_TIMER_HZ 10

/* The pass number, written into each page so every pass changes it. */
static volatile uint64_t pass;

static void touch_pages(uint64_t start, uint64_t end, uint64_t value) {
  for (uint64_t address = start; address + 8 <= end; address += PAGE_SIZE) {
    *(volatile uint64_t*)address = value ^ address;
  }
}

__attribute__((noreturn)) static void idle_forever(void) {
  rt_timer_start(IDLE_TIMER_HZ);
  for (;;) rt_wait_for_interrupt();
}

int main(void) {
  /* Read before touching RAM: the command line lies in free RAM. */
  uint64_t working_set = rt_command_line_value("dirty.wss_mb", DEFAULT_WORKING_SET_MB) << 20;
  struct rt_ram_range free[MAX_RANGES];
  size_t count = rt_free_ranges(free, MAX_RANGES);
  if (count == 0) rt_fail("the boot memory map lists no free RAM");

  uint64_t touched = 0;
  size_t largest = 0;
  for (size_t i = 0; i < count; ++i) {
    free[i].start = (free[i].start + PAGE_SIZE - 1) & ~(uint64_t)(PAGE_SIZE - 1);
    if (free[i].end <= free[i].start) continue;
    touch_pages(free[i].start, free[i].end, 0);
    touched += free[i].end - free[i].start;
    if (free[i].end - free[i].start > free[largest].end - free[largest].start) largest = i;
  }

  uint64_t start = free[largest].start;
  uint64_t available = free[largest].end - start;
  if (working_set > available) working_set = available;
  rt_printf("dirty: touched %lu bytes in %zu ranges; dirtying %lu bytes\n", touched, count,
            working_set);
  rt_printf("dirty: ready\n");

  if (working_set == 0) {
    if (!rt_clock_available()) {
      rt_printf("dirty: UNSUPPORTED: kvmclock is not available for the idle timer\n");
      return RT_EXIT_UNSUPPORTED;
    }
    idle_forever();
  }
  for (;;) {
    pass = pass + 1;
    touch_pages(start, start + working_set, pass);
  }
}
