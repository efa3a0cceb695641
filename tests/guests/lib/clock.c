/* Time from kvmclock, and the LAPIC timer. */
#include "runtime.h"

#define PVCLOCK_VERSION_UPDATING 1u
#define LVT_MASKED (1u << 16)
#define LVT_TIMER_PERIODIC (1u << 17)
#define TIMER_DIVIDE_BY_1 0xb
#define CALIBRATION_NS UINT64_C(10000000)

static uint64_t lapic_timer_hz;

static inline uint64_t read_tsc(void) {
  uint32_t low, high;
  __asm__ volatile("rdtsc" : "=a"(low), "=d"(high));
  return ((uint64_t)high << 32) | low;
}

bool rt_clock_available(void) { return rt_boot_info.kvmclock != 0; }

/* Each CPU reads the record KVM keeps for it. The version is odd while KVM
 * updates the record, and it changes with each update. */
uint64_t rt_now_ns(void) {
  if (!rt_clock_available()) return 0;
  volatile struct rt_pvclock* clock = &rt_pvclock[rt_cpu_id()];
  uint32_t version;
  uint64_t nanoseconds;
  do {
    version = clock->version;
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    uint64_t delta = read_tsc() - clock->tsc_timestamp;
    int8_t shift = clock->tsc_shift;
    delta = shift < 0 ? delta >> -shift : delta << shift;
    nanoseconds = clock->system_time +
                  (uint64_t)(((unsigned __int128)delta * clock->tsc_to_system_mul) >> 32);
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
  } while ((version & PVCLOCK_VERSION_UPDATING) || version != clock->version);
  return nanoseconds;
}

static void require_clock(void) {
  if (rt_clock_available()) return;
  rt_printf("%s: UNSUPPORTED: kvmclock is not available\n", rt_guest_name);
  rt_exit(RT_EXIT_UNSUPPORTED);
}

void rt_delay_ns(uint64_t nanoseconds) {
  require_clock();
  uint64_t start = rt_now_ns();
  while (rt_now_ns() - start < nanoseconds) rt_pause();
}

/* Counts LAPIC timer cycles over CALIBRATION_NS of kvmclock time. Each
 * timestamp is the midpoint around its stub call, so the call latency
 * cancels out. */
uint64_t rt_lapic_timer_frequency(void) {
  if (lapic_timer_hz != 0) return lapic_timer_hz;
  require_clock();
  rt_lapic_write(RT_LAPIC_TIMER_DIVIDE, TIMER_DIVIDE_BY_1);
  rt_lapic_write(RT_LAPIC_LVT_TIMER, LVT_MASKED | (RT_VECTOR_TIMER_BASE + rt_cpu_id()));
  uint64_t before_start = rt_now_ns();
  rt_lapic_write(RT_LAPIC_TIMER_INITIAL, UINT32_MAX);
  uint64_t after_start = rt_now_ns();
  while (rt_now_ns() - after_start < CALIBRATION_NS) rt_pause();
  uint64_t before_read = rt_now_ns();
  uint32_t remaining = rt_lapic_read(RT_LAPIC_TIMER_CURRENT);
  uint64_t after_read = rt_now_ns();
  rt_lapic_write(RT_LAPIC_TIMER_INITIAL, 0);
  uint64_t elapsed = (before_read + after_read) / 2 - (before_start + after_start) / 2;
  uint64_t cycles = UINT32_MAX - remaining;
  /* cycles < 2^32, so the product fits in 64 bits. */
  lapic_timer_hz = cycles * 1000000000u / elapsed;
  return lapic_timer_hz;
}

void rt_timer_start(uint32_t hz) {
  uint64_t count = rt_lapic_timer_frequency() / hz;
  if (count == 0) count = 1;
  if (count > UINT32_MAX) count = UINT32_MAX;
  rt_lapic_write(RT_LAPIC_TIMER_DIVIDE, TIMER_DIVIDE_BY_1);
  rt_lapic_write(RT_LAPIC_LVT_TIMER, LVT_TIMER_PERIODIC | (RT_VECTOR_TIMER_BASE + rt_cpu_id()));
  rt_lapic_write(RT_LAPIC_TIMER_INITIAL, (uint32_t)count);
}

void rt_timer_stop(void) {
  rt_lapic_write(RT_LAPIC_LVT_TIMER, LVT_MASKED | (RT_VECTOR_TIMER_BASE + rt_cpu_id()));
  rt_lapic_write(RT_LAPIC_TIMER_INITIAL, 0);
}

uint64_t rt_ticks(void) { return rt_cpu_ticks[rt_cpu_id()]; }
