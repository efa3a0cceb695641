/*
 * counter: a long-running guest for the fork tests. CPU 0 increments the
 * 64-bit word at guest-physical COUNTER0_ADDRESS (8 MiB) without pause. With
 * two or more vCPUs, the first AP ("cpu 1" below) does the same at
 * COUNTER1_ADDRESS (8 MiB + 4 KiB, a separate page). Each of the two runs its
 * LAPIC timer at 100 Hz and prints its counter every K ticks. K comes from
 * "counter.every=K" on the command line and defaults to 50, every 0.5 s. The
 * guest never exits.
 *
 * Output:
 *   counter: cpu 0 increments the word at 0x800000, printing every K ticks at 100 Hz
 *   counter: cpu 1 increments the word at 0x801000, printing every K ticks at 100 Hz
 *   counter: cpu <i> tick <ticks> value <value>      (repeated)
 * The counters start at 0 when the guest starts.
 */
#include "runtime.h"

const char rt_guest_name[] = "counter";

#define COUNTER0_ADDRESS 0x800000ull
#define COUNTER1_ADDRESS 0x801000ull
#define TIMER_HZ 100
#define DEFAULT_EVERY 50

static uint64_t every;

static volatile uint64_t* counter_for(unsigned index) {
  return (volatile uint64_t*)(index == 0 ? COUNTER0_ADDRESS : COUNTER1_ADDRESS);
}

static void announce(unsigned index) {
  rt_printf("counter: cpu %u increments the word at 0x%lx, printing every %lu ticks at %u Hz\n",
            index, (uint64_t)counter_for(index), every, TIMER_HZ);
}

__attribute__((noreturn)) static void count_forever(unsigned index) {
  volatile uint64_t* counter = counter_for(index);
  rt_timer_start(TIMER_HZ);
  uint64_t next = rt_ticks() + every;
  for (;;) {
    *counter += 1;
    uint64_t ticks = rt_ticks();
    if (ticks >= next) {
      rt_printf("counter: cpu %u tick %lu value %lu\n", index, ticks, *counter);
      next = ticks + every;
    }
  }
}

/* Only the first AP counts. Any others idle. */
static void ap_main(unsigned cpu) {
  static volatile uint32_t claimed;
  (void)cpu;
  if (__atomic_exchange_n(&claimed, 1, __ATOMIC_ACQ_REL) != 0) return;
  announce(1);
  count_forever(1);
}

int main(void) {
  if (!rt_clock_available()) {
    rt_printf("counter: UNSUPPORTED: kvmclock is not available\n");
    return RT_EXIT_UNSUPPORTED;
  }
  every = rt_command_line_value("counter.every", DEFAULT_EVERY);
  if (every == 0) every = DEFAULT_EVERY;
  *counter_for(0) = 0;
  *counter_for(1) = 0;
  rt_lapic_timer_frequency();
  announce(0);
  /* The AP announces itself after cpu 0, once it is online. */
  if (rt_cpu_count() >= 2) rt_smp_start(ap_main);
  count_forever(0);
}
