/*
 * fork_probe: the guest of the fork tests. It shows whether memory, timer
 * interrupts, vCPUs and a disk carry on in a forked VM, and whether a
 * parent and its child stay apart.
 *
 * CPU 0 counts in the 64-bit word at 0x800000. With two or more vCPUs, the
 * first AP ("cpu 1") counts in the word at 0x801000. Each of the two runs its
 * LAPIC timer at 100 Hz, halts until the next interrupt and adds 1 to its
 * word each time round. With "fork_probe.busy=1" it spins instead of
 * halting. It prints a numbered report every K timer ticks, K from
 * "fork_probe.every=K" (default 10):
 *   fork_probe: cpu <i> line <n> tick <ticks> value <count>
 * Lines count from 1 on each CPU, and ticks are the timer interrupts the CPU
 * has taken. Both counts live in guest memory, so a fork child continues
 * them.
 *
 * CPU 0 also reads commands from the 16550 UART, one per line, polling once
 * per tick. Values are decimal or 0x-prefixed hexadecimal.
 *   mem read                    fork_probe: mem 0x802000 holds <word>
 *   mem write <value>           fork_probe: mem 0x802000 held <word>, now holds <word>
 *   disk read <sector>          fork_probe: disk sector <s> holds <contents>
 *   disk write <sector> <value> fork_probe: disk sector <s> held <contents>, now holds <contents>
 * <word> is 0x and 16 hex digits. <contents> is a <word> when the sector
 * holds that 64-bit value 64 times, and "mixed data" otherwise. "disk write"
 * writes the value 64 times, flushes, and reads the sector back. The disk
 * commands need "fork_probe.disk=1" and virtio-blk disk 0. A bad command
 * prints "fork_probe: error: <reason>".
 *
 * Start-up output, before the reports:
 *   fork_probe: cpu 0 counts at 0x800000, reporting every K ticks at 100 Hz
 *   fork_probe: cpu 1 counts at 0x801000, reporting every K ticks at 100 Hz   (2+ vCPUs)
 *   fork_probe: disk 0 has <N> sectors                                        (fork_probe.disk=1)
 *   fork_probe: ready
 * The guest never exits.
 */
#include "virtio_blk.h"

const char rt_guest_name[] = "fork_probe";

#define COUNTER0_ADDRESS UINT64_C(0x800000)
#define COUNTER1_ADDRESS UINT64_C(0x801000)
#define MEM_ADDRESS UINT64_C(0x802000)
#define TIMER_HZ 100
#define DEFAULT_EVERY 10
#define COMMAND_BYTES 80
#define SECTOR_WORDS (RT_BLK_SECTOR_BYTES / 8)

static uint64_t every;
static bool busy;
static bool have_disk;
static struct rt_blk disk;
static uint64_t sector_words[SECTOR_WORDS] __attribute__((aligned(512)));
static volatile uint32_t ap_announced;

static volatile uint64_t* counter_for(unsigned cpu) {
  return (volatile uint64_t*)(cpu == 0 ? COUNTER0_ADDRESS : COUNTER1_ADDRESS);
}

static void announce(unsigned cpu) {
  rt_printf("fork_probe: cpu %u counts at 0x%lx, reporting every %lu ticks at %u Hz\n", cpu,
            (uint64_t)counter_for(cpu), every, TIMER_HZ);
}

/* --- commands --- */

static const char* skip_spaces(const char* text) {
  while (*text == ' ') ++text;
  return text;
}

/* Parses the word at *cursor as a number and moves past it. */
static bool parse_value(const char** cursor, uint64_t* value) {
  const char* text = skip_spaces(*cursor);
  unsigned base = 10;
  if (text[0] == '0' && (text[1] == 'x' || text[1] == 'X')) {
    base = 16;
    text += 2;
  }
  const char* start = text;
  uint64_t result = 0;
  for (; *text != '\0' && *text != ' '; ++text) {
    unsigned digit;
    if (*text >= '0' && *text <= '9') {
      digit = (unsigned)(*text - '0');
    } else if (base == 16 && *text >= 'a' && *text <= 'f') {
      digit = (unsigned)(*text - 'a' + 10);
    } else if (base == 16 && *text >= 'A' && *text <= 'F') {
      digit = (unsigned)(*text - 'A' + 10);
    } else {
      return false;
    }
    result = result * base + digit;
  }
  if (text == start) return false;
  *value = result;
  *cursor = text;
  return true;
}

/* Returns the text after `word` and a space, or 0 if `text` does not start
 * with that word. */
static const char* after_word(const char* text, const char* word) {
  size_t length = strlen(word);
  if (memcmp(text, word, length) != 0) return 0;
  if (text[length] != ' ' && text[length] != '\0') return 0;
  return skip_spaces(text + length);
}

static bool at_end(const char* cursor) { return *skip_spaces(cursor) == '\0'; }

static void memory_command(const char* arguments) {
  volatile uint64_t* word = (volatile uint64_t*)MEM_ADDRESS;
  uint64_t value;
  const char* rest;
  if ((rest = after_word(arguments, "read")) != 0 && at_end(rest)) {
    rt_printf("fork_probe: mem 0x%lx holds 0x%016lx\n", MEM_ADDRESS, *word);
  } else if ((rest = after_word(arguments, "write")) != 0 && parse_value(&rest, &value) &&
             at_end(rest)) {
    uint64_t old = *word;
    *word = value;
    rt_printf("fork_probe: mem 0x%lx held 0x%016lx, now holds 0x%016lx\n", MEM_ADDRESS, old,
              *word);
  } else {
    rt_printf("fork_probe: error: expected 'mem read' or 'mem write <value>'\n");
  }
}

static void describe_sector(char* out, size_t size) {
  for (size_t i = 1; i < SECTOR_WORDS; ++i) {
    if (sector_words[i] != sector_words[0]) {
      rt_snprintf(out, size, "mixed data");
      return;
    }
  }
  rt_snprintf(out, size, "0x%016lx", sector_words[0]);
}

/* Runs one disk request on sector_words; prints an error and returns false
 * if it fails. */
static bool disk_transfer(uint32_t type, uint64_t sector) {
  uint32_t bytes = type == RT_BLK_T_FLUSH ? 0 : RT_BLK_SECTOR_BYTES;
  int status = rt_blk_transfer(&disk, type, sector, type == RT_BLK_T_FLUSH ? 0 : sector_words,
                               bytes);
  if (status == RT_BLK_S_OK) return true;
  rt_printf("fork_probe: error: disk request type %u at sector %lu failed with status %d\n", type,
            sector, status);
  return false;
}

static void disk_write(uint64_t sector, uint64_t value) {
  char before[24], after[24];
  if (!disk_transfer(RT_BLK_T_IN, sector)) return;
  describe_sector(before, sizeof(before));
  for (size_t i = 0; i < SECTOR_WORDS; ++i) sector_words[i] = value;
  if (!disk_transfer(RT_BLK_T_OUT, sector) || !disk_transfer(RT_BLK_T_FLUSH, 0)) return;
  memset(sector_words, 0, sizeof(sector_words));
  if (!disk_transfer(RT_BLK_T_IN, sector)) return;
  describe_sector(after, sizeof(after));
  rt_printf("fork_probe: disk sector %lu held %s, now holds %s\n", sector, before, after);
}

static void disk_command(const char* arguments) {
  uint64_t sector, value;
  const char* rest;
  if (!have_disk) {
    rt_printf("fork_probe: error: no disk; boot with fork_probe.disk=1 and a virtio-blk disk\n");
  } else if ((rest = after_word(arguments, "read")) != 0 && parse_value(&rest, &sector) &&
             at_end(rest)) {
    char contents[24];
    if (!disk_transfer(RT_BLK_T_IN, sector)) return;
    describe_sector(contents, sizeof(contents));
    rt_printf("fork_probe: disk sector %lu holds %s\n", sector, contents);
  } else if ((rest = after_word(arguments, "write")) != 0 && parse_value(&rest, &sector) &&
             parse_value(&rest, &value) && at_end(rest)) {
    disk_write(sector, value);
  } else {
    rt_printf("fork_probe: error: expected 'disk read <sector>' or 'disk write <sector> <value>'\n");
  }
}

static void run_command(const char* line) {
  const char* arguments;
  line = skip_spaces(line);
  if (*line == '\0') return;
  if ((arguments = after_word(line, "mem")) != 0) {
    memory_command(arguments);
  } else if ((arguments = after_word(line, "disk")) != 0) {
    disk_command(arguments);
  } else {
    rt_printf("fork_probe: error: unknown command '%s'\n", line);
  }
}

/* Reads the bytes the UART has received and runs each complete line. A line longer than
 * COMMAND_BYTES - 1 is dropped with an error. */
static void poll_console(void) {
  static char line[COMMAND_BYTES];
  static size_t length;
  static bool overflowed;
  int byte;
  while ((byte = rt_serial_read()) >= 0) {
    if (byte == '\n' || byte == '\r') {
      line[length] = '\0';
      if (overflowed) {
        rt_printf("fork_probe: error: command longer than %u bytes\n", COMMAND_BYTES - 1);
      } else {
        run_command(line);
      }
      length = 0;
      overflowed = false;
    } else if (length + 1 < COMMAND_BYTES) {
      line[length++] = (char)byte;
    } else {
      overflowed = true;
    }
  }
}

/* --- counting --- */

__attribute__((noreturn)) static void count_forever(unsigned cpu) {
  volatile uint64_t* counter = counter_for(cpu);
  rt_timer_start(TIMER_HZ);
  uint64_t line = 0;
  uint64_t polled_at = rt_ticks();
  uint64_t next = polled_at + every;
  for (;;) {
    *counter += 1;
    uint64_t ticks = rt_ticks();
    if (cpu == 0 && ticks != polled_at) {
      polled_at = ticks;
      poll_console();
    }
    if (ticks >= next) {
      rt_printf("fork_probe: cpu %u line %lu tick %lu value %lu\n", cpu, ++line, ticks, *counter);
      next = ticks + every;
    }
    if (!busy) rt_wait_for_interrupt();
  }
}

/* Only the first AP counts. Any others halt. */
static void ap_main(unsigned cpu) {
  static volatile uint32_t claimed;
  (void)cpu;
  if (__atomic_exchange_n(&claimed, 1, __ATOMIC_ACQ_REL) != 0) return;
  announce(1);
  __atomic_store_n(&ap_announced, 1, __ATOMIC_RELEASE);
  count_forever(1);
}

int main(void) {
  if (!rt_clock_available()) {
    rt_printf("fork_probe: UNSUPPORTED: kvmclock is not available\n");
    return RT_EXIT_UNSUPPORTED;
  }
  every = rt_command_line_value("fork_probe.every", DEFAULT_EVERY);
  if (every == 0) every = DEFAULT_EVERY;
  busy = rt_command_line_value("fork_probe.busy", 0) != 0;
  *counter_for(0) = 0;
  *counter_for(1) = 0;
  *(volatile uint64_t*)MEM_ADDRESS = 0;
  rt_lapic_timer_frequency();
  announce(0);
  if (rt_cpu_count() >= 2) {
    if (rt_smp_start(ap_main) == 0) rt_fail("no AP came online");
    while (!__atomic_load_n(&ap_announced, __ATOMIC_ACQUIRE)) rt_pause();
  }
  if (rt_command_line_value("fork_probe.disk", 0) != 0) {
    const char* error = rt_blk_init(&disk, 0);
    if (error != 0) rt_fail("virtio-blk disk 0: %s", error);
    have_disk = true;
    rt_printf("fork_probe: disk 0 has %lu sectors\n", disk.capacity);
  }
  rt_printf("fork_probe: ready\n");
  count_forever(0);
}
