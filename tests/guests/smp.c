/*
 * smp: starts every AP listed in the MP table with INIT and startup IPIs.
 * Each CPU, the BSP included, increments its own counter in ring 3 and runs
 * its own LAPIC timer. The BSP checks that every CPU did both.
 *
 * Output on success with N vCPUs:
 *   smp: N CPUs in the MP table
 *   smp: cpu <i>: counted and took timer interrupts   (for i = 0 .. N-1)
 *   smp: PASS: N of N CPUs ran ring-3 code
 */
#include "runtime.h"

const char rt_guest_name[] = "smp";

#define TIMER_HZ 100
#define TARGET_COUNT UINT64_C(1000000)
#define TARGET_TICKS 2
#define BUDGET_NS UINT64_C(10000000000)

struct counter {
  volatile uint64_t value;
} __attribute__((aligned(64)));

static struct counter counters[RT_MAX_CPUS];
static volatile uint32_t stop;

static void count_until_stopped(unsigned cpu) {
  rt_timer_start(TIMER_HZ);
  while (!stop) counters[cpu].value++;
  rt_timer_stop();
}

static bool cpu_done(unsigned cpu) {
  return counters[cpu].value >= TARGET_COUNT && rt_cpu_ticks[cpu] >= TARGET_TICKS;
}

int main(void) {
  if (!rt_clock_available()) {
    rt_printf("smp: UNSUPPORTED: kvmclock is not available\n");
    return RT_EXIT_UNSUPPORTED;
  }
  unsigned expected = rt_cpu_count();
  rt_printf("smp: %u CPUs in the MP table\n", expected);
  if (expected > RT_MAX_CPUS) rt_fail("the runtime supports at most %u CPUs", RT_MAX_CPUS);
  /* Calibrate once here, so the APs do not calibrate at the same time. */
  rt_lapic_timer_frequency();

  unsigned started = rt_smp_start(count_until_stopped);
  if (started != expected - 1) rt_fail("%u of %u APs came online", started, expected - 1);

  unsigned bsp = rt_cpu_id();
  rt_timer_start(TIMER_HZ);
  uint64_t start = rt_now_ns();
  for (;;) {
    unsigned done = 0;
    for (unsigned cpu = 0; cpu < RT_MAX_CPUS; ++cpu) {
      if ((cpu == bsp || rt_cpu_online[cpu]) && cpu_done(cpu)) ++done;
    }
    if (done == expected) break;
    if (rt_now_ns() - start > BUDGET_NS) {
      for (unsigned cpu = 0; cpu < RT_MAX_CPUS; ++cpu) {
        if (cpu != bsp && !rt_cpu_online[cpu]) continue;
        rt_printf("smp: cpu %u: count %lu, ticks %lu\n", cpu, counters[cpu].value,
                  rt_cpu_ticks[cpu]);
      }
      rt_fail("%u of %u CPUs reached %lu counts and %u ticks within %lu s", done, expected,
              TARGET_COUNT, TARGET_TICKS, BUDGET_NS / UINT64_C(1000000000));
    }
    counters[bsp].value++;
  }
  stop = 1;
  rt_timer_stop();

  for (unsigned cpu = 0; cpu < RT_MAX_CPUS; ++cpu) {
    if (cpu == bsp || rt_cpu_online[cpu]) {
      rt_printf("smp: cpu %u: counted and took timer interrupts\n", cpu);
    }
  }
  rt_printf("smp: PASS: %u of %u CPUs ran ring-3 code\n", expected, expected);
  return RT_EXIT_PASS;
}
