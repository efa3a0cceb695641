/*
 * timer: runs the LAPIC timer in periodic mode and counts its interrupts in
 * ring 3, first while ring 3 spins and then while it halts between
 * interrupts.
 *
 * Passes when TICKS interrupts arrive within BUDGET_NS and no sooner than
 * 90% of the time they should take at the programmed rate (a timer that
 * fires too fast is as wrong as one that never fires). Output on success:
 *   timer: LAPIC timer at <hz> Hz, calibrated to <hz> Hz against kvmclock
 *   timer: PASS: 200 interrupts in <ms> ms (100 while spinning in ring 3, 100 while halted)
 */
#include "runtime.h"

const char rt_guest_name[] = "timer";

#define TIMER_HZ 1000
#define TICKS 200
#define BUDGET_NS UINT64_C(3000000000)

static void wait_for_ticks(uint64_t target, uint64_t start, bool halt) {
  while (rt_ticks() < target) {
    if (rt_now_ns() - start > BUDGET_NS) {
      rt_fail("%lu of %u interrupts within %lu ms", rt_ticks(), TICKS, BUDGET_NS / 1000000);
    }
    if (halt) {
      rt_wait_for_interrupt();
    } else {
      rt_pause();
    }
  }
}

int main(void) {
  if (!rt_clock_available()) {
    rt_printf("timer: UNSUPPORTED: kvmclock is not available\n");
    return RT_EXIT_UNSUPPORTED;
  }
  uint64_t frequency = rt_lapic_timer_frequency();
  rt_printf("timer: LAPIC timer at %u Hz, calibrated to %lu Hz against kvmclock\n", TIMER_HZ,
            frequency);
  uint64_t first = rt_ticks();
  uint64_t start = rt_now_ns();
  rt_timer_start(TIMER_HZ);
  wait_for_ticks(first + TICKS / 2, start, false);
  wait_for_ticks(first + TICKS, start, true);
  uint64_t elapsed = rt_now_ns() - start;
  rt_timer_stop();

  uint64_t expected_ns = UINT64_C(1000000000) / TIMER_HZ * TICKS;
  if (elapsed < expected_ns / 10 * 9) {
    rt_fail("%u interrupts after %lu us; at %u Hz they take %lu us", TICKS, elapsed / 1000,
            TIMER_HZ, expected_ns / 1000);
  }
  rt_printf("timer: PASS: %u interrupts in %lu ms (%u while spinning in ring 3, %u while halted)\n",
            TICKS, elapsed / 1000000, TICKS / 2, TICKS / 2);
  return RT_EXIT_PASS;
}
