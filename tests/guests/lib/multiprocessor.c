/*
 * Processor discovery through the MP table and AP start-up with INIT and
 * startup IPIs (Intel MultiProcessor Specification 1.4, chapter 4 and
 * appendix B).
 */
#include "runtime.h"

#define ICR_INIT 0x00004500u    /* INIT, level assert */
#define ICR_STARTUP 0x00004600u /* startup, level assert, vector in bits 7:0 */
#define ICR_DELIVERY_PENDING (1u << 12)
#define ICR_MAX_POLLS 1000
#define INIT_WAIT_NS UINT64_C(10000000)
#define STARTUP_WAIT_NS UINT64_C(200000)
#define ONLINE_TIMEOUT_NS UINT64_C(2000000000)

#define MP_ENTRY_PROCESSOR 0
#define MP_PROCESSOR_BYTES 20
#define MP_OTHER_ENTRY_BYTES 8
#define MP_PROCESSOR_ENABLED 0x1

volatile uint32_t rt_cpu_online[RT_MAX_CPUS];
static void (*ap_entry)(unsigned cpu);

static uint8_t checksum(const uint8_t* bytes, size_t length) {
  uint8_t sum = 0;
  for (size_t i = 0; i < length; ++i) sum = (uint8_t)(sum + bytes[i]);
  return sum;
}

static uint32_t load32(const uint8_t* bytes) {
  return (uint32_t)bytes[0] | (uint32_t)bytes[1] << 8 | (uint32_t)bytes[2] << 16 |
         (uint32_t)bytes[3] << 24;
}

/* Finds the MP floating pointer structure in [start, end). The first KiB of
 * the EBDA is not searched: its segment is stored in page 0, which is not
 * mapped. */
static const uint8_t* find_floating_pointer(uint64_t start, uint64_t end) {
  for (uint64_t address = start; address + 16 <= end; address += 16) {
    const uint8_t* candidate = (const uint8_t*)address;
    if (memcmp(candidate, "_MP_", 4) != 0) continue;
    size_t length = (size_t)candidate[8] * 16;
    if (length >= 16 && checksum(candidate, length) == 0) return candidate;
  }
  return 0;
}

/* Writes the APIC IDs of the enabled processors and returns how many there
 * are (possibly more than `capacity`), or 0 without a usable MP table. */
static size_t mp_processors(uint8_t* apic_ids, size_t capacity) {
  const uint8_t* pointer = find_floating_pointer(0x9fc00, 0xa0000);
  if (pointer == 0) pointer = find_floating_pointer(0xf0000, 0x100000);
  if (pointer == 0 || load32(pointer + 4) == 0) return 0;
  const uint8_t* table = (const uint8_t*)(uint64_t)load32(pointer + 4);
  uint16_t length = (uint16_t)(table[4] | table[5] << 8);
  if (memcmp(table, "PCMP", 4) != 0 || checksum(table, length) != 0) return 0;
  uint16_t entries = (uint16_t)(table[34] | table[35] << 8);
  const uint8_t* entry = table + 44;
  const uint8_t* table_end = table + length;
  size_t found = 0;
  for (uint16_t i = 0; i < entries && entry < table_end; ++i) {
    if (entry[0] != MP_ENTRY_PROCESSOR) {
      entry += MP_OTHER_ENTRY_BYTES;
      continue;
    }
    if (entry[3] & MP_PROCESSOR_ENABLED) {
      if (found < capacity) apic_ids[found] = entry[1];
      ++found;
    }
    entry += MP_PROCESSOR_BYTES;
  }
  return found;
}

unsigned rt_cpu_count(void) {
  uint8_t ids[RT_MAX_CPUS];
  size_t count = mp_processors(ids, RT_MAX_CPUS);
  return count == 0 ? 1 : (unsigned)count;
}

static void send_ipi(uint8_t apic_id, uint32_t command) {
  rt_lapic_write(RT_LAPIC_ICR_HIGH, (uint32_t)apic_id << 24);
  rt_lapic_write(RT_LAPIC_ICR_LOW, command);
  for (int poll = 0; poll < ICR_MAX_POLLS; ++poll) {
    if (!(rt_lapic_read(RT_LAPIC_ICR_LOW) & ICR_DELIVERY_PENDING)) return;
  }
}

static bool is_startable(uint8_t apic_id) {
  return apic_id != rt_boot_info.bsp_apic_id && apic_id < RT_MAX_CPUS;
}

/* INIT, 10 ms, startup IPI, 200 us, and a second startup IPI for each AP
 * that is not yet online (MP specification, B.4). */
unsigned rt_smp_start(void (*ap_main)(unsigned cpu)) {
  uint8_t ids[RT_MAX_CPUS];
  size_t count = mp_processors(ids, RT_MAX_CPUS);
  if (count > RT_MAX_CPUS) count = RT_MAX_CPUS;
  if (count <= 1) return 0;
  ap_entry = ap_main;
  rt_call(RT_CALL_INSTALL_TRAMPOLINE, 0, 0, 0);
  uint32_t startup = ICR_STARTUP | (RT_TRAMPOLINE_ADDRESS >> 12);

  for (size_t i = 0; i < count; ++i) {
    if (is_startable(ids[i])) send_ipi(ids[i], ICR_INIT);
  }
  rt_delay_ns(INIT_WAIT_NS);
  for (size_t i = 0; i < count; ++i) {
    if (is_startable(ids[i])) send_ipi(ids[i], startup);
  }
  rt_delay_ns(STARTUP_WAIT_NS);
  for (size_t i = 0; i < count; ++i) {
    if (is_startable(ids[i]) && !rt_cpu_online[ids[i]]) send_ipi(ids[i], startup);
  }

  unsigned startable = 0;
  for (size_t i = 0; i < count; ++i) startable += is_startable(ids[i]);
  unsigned online = 0;
  uint64_t start = rt_now_ns();
  do {
    online = 0;
    for (size_t i = 0; i < count; ++i) {
      if (is_startable(ids[i]) && rt_cpu_online[ids[i]]) ++online;
    }
    if (online == startable) break;
    rt_pause();
  } while (rt_now_ns() - start < ONLINE_TIMEOUT_NS);
  return online;
}

__attribute__((noreturn)) void rt_start_ap(unsigned cpu) {
  __atomic_store_n(&rt_cpu_online[cpu], 1, __ATOMIC_RELEASE);
  ap_entry(cpu);
  for (;;) rt_wait_for_interrupt();
}
