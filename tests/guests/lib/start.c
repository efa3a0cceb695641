/* State shared with the stub, ring-3 start-up, exit and stub-call wrappers. */
#include "runtime.h"

struct rt_boot_info rt_boot_info;
volatile uint64_t rt_cpu_ticks[RT_MAX_CPUS];
volatile uint64_t rt_irq_counts[RT_DEVICE_IRQS];
struct rt_pvclock rt_pvclock[RT_MAX_CPUS];
uint8_t rt_user_stacks[RT_MAX_CPUS][RT_USER_STACK_BYTES] __attribute__((aligned(16)));

__attribute__((noreturn)) void rt_start_bsp(unsigned cpu) {
  (void)cpu;
  rt_exit(main());
}

void rt_exit(int code) {
  if (rt_boot_info.protocol == RT_BOOT_FORKVMM) {
    *(volatile uint32_t*)(RT_DEBUG_DEVICE_ADDRESS + RT_DEBUG_EXIT_OFFSET) = (uint32_t)code;
  } else {
    rt_call(RT_CALL_EXIT, (uint64_t)code, 0, 0);
  }
  /* The VMM stops every vCPU after the exit write, this one included. */
  for (;;) rt_pause();
}

void rt_fail(const char* format, ...) {
  char message[200];
  va_list args;
  va_start(args, format);
  rt_vsnprintf(message, sizeof(message), format, args);
  va_end(args);
  rt_printf("%s: FAIL: %s\n", rt_guest_name, message);
  rt_exit(RT_EXIT_FAIL);
}

unsigned rt_cpu_id(void) {
  uint64_t stack;
  __asm__("mov %%rsp, %0" : "=r"(stack));
  return (unsigned)((stack - (uint64_t)rt_user_stacks) / RT_USER_STACK_BYTES);
}

uint8_t rt_inb(uint16_t port) { return (uint8_t)rt_call(RT_CALL_PORT_READ8, port, 0, 0); }

void rt_outb(uint16_t port, uint8_t value) { rt_call(RT_CALL_PORT_WRITE8, port, value, 0); }

uint32_t rt_lapic_read(uint32_t offset) {
  return (uint32_t)rt_call(RT_CALL_LAPIC_READ, offset, 0, 0);
}

void rt_lapic_write(uint32_t offset, uint32_t value) {
  rt_call(RT_CALL_LAPIC_WRITE, offset, value, 0);
}

uint32_t rt_ioapic_read(uint32_t index) {
  return (uint32_t)rt_call(RT_CALL_IOAPIC_READ, index, 0, 0);
}

void rt_ioapic_write(uint32_t index, uint32_t value) {
  rt_call(RT_CALL_IOAPIC_WRITE, index, value, 0);
}

/* Redirection table entry n is registers 0x10 + 2n (low) and 0x11 + 2n
 * (high) (82093AA IOAPIC data sheet, 3.2.4): fixed delivery, physical
 * destination, edge-triggered, active high, unmasked. */
void rt_ioapic_route(unsigned irq, unsigned cpu) {
  rt_ioapic_write(0x11 + 2 * irq, (uint32_t)cpu << 24);
  rt_ioapic_write(0x10 + 2 * irq, RT_VECTOR_DEVICE_IRQ_BASE + irq);
}

void rt_serial_write(const char* text, size_t length) {
  rt_call(RT_CALL_SERIAL_WRITE, (uint64_t)text, length, 0);
}

/* Line status bit 0 (data ready) is set while the receive buffer contains a
 * byte (PC16550D data sheet, line status register). */
int rt_serial_read(void) {
  if (!(rt_inb(0x3f8 + 5) & 0x01)) return -1;
  return rt_inb(0x3f8);
}

void rt_wait_for_interrupt(void) { rt_call(RT_CALL_WAIT_FOR_INTERRUPT, 0, 0, 0); }

const char* rt_command_line(void) {
  if (rt_boot_info.command_line == 0) return "";
  return (const char*)rt_boot_info.command_line;
}

static bool parse_number(const char* text, uint64_t* value) {
  unsigned base = 10;
  if (text[0] == '0' && (text[1] == 'x' || text[1] == 'X')) {
    base = 16;
    text += 2;
  }
  uint64_t result = 0;
  const char* start = text;
  for (; *text && *text != ' '; ++text) {
    char c = *text;
    unsigned digit;
    if (c >= '0' && c <= '9') {
      digit = (unsigned)(c - '0');
    } else if (base == 16 && c >= 'a' && c <= 'f') {
      digit = (unsigned)(c - 'a' + 10);
    } else if (base == 16 && c >= 'A' && c <= 'F') {
      digit = (unsigned)(c - 'A' + 10);
    } else {
      return false;
    }
    result = result * base + digit;
  }
  if (text == start) return false;
  *value = result;
  return true;
}

uint64_t rt_command_line_value(const char* name, uint64_t fallback) {
  size_t name_length = strlen(name);
  const char* line = rt_command_line();
  while (*line) {
    while (*line == ' ') ++line;
    if (memcmp(line, name, name_length) == 0 && line[name_length] == '=') {
      uint64_t value;
      return parse_number(line + name_length + 1, &value) ? value : fallback;
    }
    while (*line && *line != ' ') ++line;
  }
  return fallback;
}
