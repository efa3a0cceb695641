/*
 * lines: prints numbered lines whose text depends on nothing but their
 * number, so a fork child's console output must continue its parent's byte
 * for byte. The fork tests check the seam with it.
 *
 * With its LAPIC timer at 100 Hz, the guest prints N lines per tick, N from
 * "lines.per_tick=N" (default 4), and halts between ticks. Output:
 *   lines: numbered lines, N per tick at 100 Hz, through <device>
 *   lines: 000001 the quick brown fox
 *   lines: 000002 the quick brown fox
 *   ...
 * Each numbered line is 34 bytes with its newline. <device> is "the debug
 * device" by default: ring 3 stores each byte to its MMIO page, one MMIO
 * exit per byte. With "lines.uart=1" it is "the UART": the stub writes each
 * line to the 16550 at port 0x3f8 from CPL0, polling the line status
 * register before each byte, so every byte is an IN and an OUT exit. Either
 * way a fork often lands in the middle of a line. The guest never exits.
 */
#include "runtime.h"

const char rt_guest_name[] = "lines";

#define TIMER_HZ 100
#define DEFAULT_PER_TICK 4
#define LINE_BYTES 128

static bool use_uart;

static void print_line(const char* format, ...) __attribute__((format(printf, 1, 2)));

static void print_line(const char* format, ...) {
  char line[LINE_BYTES];
  va_list args;
  va_start(args, format);
  int length = rt_vsnprintf(line, sizeof(line), format, args);
  va_end(args);
  size_t bytes = (size_t)length < sizeof(line) ? (size_t)length : sizeof(line) - 1;
  if (use_uart) {
    rt_serial_write(line, bytes);
  } else {
    rt_write(line, bytes);
  }
}

int main(void) {
  if (!rt_clock_available()) {
    rt_printf("lines: UNSUPPORTED: kvmclock is not available\n");
    return RT_EXIT_UNSUPPORTED;
  }
  uint64_t per_tick = rt_command_line_value("lines.per_tick", DEFAULT_PER_TICK);
  if (per_tick == 0) per_tick = DEFAULT_PER_TICK;
  use_uart = rt_command_line_value("lines.uart", 0) != 0;
  print_line("lines: numbered lines, %lu per tick at %u Hz, through %s\n", per_tick, TIMER_HZ,
             use_uart ? "the UART" : "the debug device");
  rt_timer_start(TIMER_HZ);
  uint64_t number = 0;
  for (;;) {
    for (uint64_t i = 0; i < per_tick; ++i) print_line("lines: %06lu the quick brown fox\n", ++number);
    rt_wait_for_interrupt();
  }
}
