/*
 * The stub's services for ring 3 (the INT3 calls of abi.h), console output
 * and exit at CPL0, and the report of an unexpected exception.
 */
#include "stub.h"

#define SERIAL_PORT 0x3f8
#define SERIAL_LINE_STATUS (SERIAL_PORT + 5)
#define SERIAL_TRANSMIT_EMPTY 0x20
/* Polls of the line status before a byte is sent anyway. No UART that
 * forkvmm or QEMU emulates makes the transmitter wait. */
#define SERIAL_MAX_POLLS 100000
#define IOAPIC_SELECT 0x00
#define IOAPIC_WINDOW 0x10

void stub_console_write(const char* text, size_t length) {
  for (size_t i = 0; i < length; ++i) {
    if (rt_boot_info.protocol == RT_BOOT_PVH) {
      stub_outb(RT_DEBUGCON_PORT, (uint8_t)text[i]);
    } else {
      *(volatile uint8_t*)(RT_DEBUG_DEVICE_ADDRESS + RT_DEBUG_CONSOLE_OFFSET) = (uint8_t)text[i];
    }
  }
}

/* On QEMU the exit status is (code << 1) | 1. Without an isa-debug-exit
 * device the CPU parks. */
void stub_exit(uint32_t code) {
  if (rt_boot_info.protocol == RT_BOOT_PVH) {
    stub_outb(RT_QEMU_EXIT_PORT, (uint8_t)code);
  } else {
    stub_mmio_write32(RT_DEBUG_DEVICE_ADDRESS + RT_DEBUG_EXIT_OFFSET, code);
  }
  stub_park();
}

static void serial_write(const char* text, size_t length) {
  for (size_t i = 0; i < length; ++i) {
    for (int poll = 0; poll < SERIAL_MAX_POLLS; ++poll) {
      if (stub_inb(SERIAL_LINE_STATUS) & SERIAL_TRANSMIT_EMPTY) break;
    }
    stub_outb(SERIAL_PORT, (uint8_t)text[i]);
  }
}

/* NOTE: the IOAPIC's select-then-window access is not locked, so only one CPU
 * at a time may use the IOAPIC calls. */
static uint32_t ioapic_read(uint32_t index) {
  stub_mmio_write32(RT_IOAPIC_ADDRESS + IOAPIC_SELECT, index);
  return stub_mmio_read32(RT_IOAPIC_ADDRESS + IOAPIC_WINDOW);
}

static void ioapic_write(uint32_t index, uint32_t value) {
  stub_mmio_write32(RT_IOAPIC_ADDRESS + IOAPIC_SELECT, index);
  stub_mmio_write32(RT_IOAPIC_ADDRESS + IOAPIC_WINDOW, value);
}

static void install_trampoline(void) {
  size_t length = (size_t)(stub_trampoline_end - stub_trampoline_start);
  volatile char* target = (volatile char*)RT_TRAMPOLINE_ADDRESS;
  for (size_t i = 0; i < length; ++i) target[i] = stub_trampoline_start[i];
  rt_boot_info.trampoline_installed = 1;
}

/* Called from stub_breakpoint_entry with interrupts off. Returns UINT64_MAX
 * for an unknown call number. */
uint64_t stub_handle_call(uint64_t number, uint64_t arg0, uint64_t arg1, uint64_t arg2) {
  (void)arg2;
  switch (number) {
    case RT_CALL_EXIT:
      stub_exit((uint32_t)arg0);
    case RT_CALL_CONSOLE_WRITE:
      stub_console_write((const char*)arg0, arg1);
      return 0;
    case RT_CALL_PORT_READ8:
      return stub_inb((uint16_t)arg0);
    case RT_CALL_PORT_WRITE8:
      stub_outb((uint16_t)arg0, (uint8_t)arg1);
      return 0;
    case RT_CALL_LAPIC_READ:
      return stub_lapic_read((uint32_t)arg0 & 0xff0);
    case RT_CALL_LAPIC_WRITE:
      stub_lapic_write((uint32_t)arg0 & 0xff0, (uint32_t)arg1);
      return 0;
    case RT_CALL_IOAPIC_READ:
      return ioapic_read((uint32_t)arg0);
    case RT_CALL_IOAPIC_WRITE:
      ioapic_write((uint32_t)arg0, (uint32_t)arg1);
      return 0;
    case RT_CALL_SERIAL_WRITE:
      serial_write((const char*)arg0, arg1);
      return 0;
    case RT_CALL_WAIT_FOR_INTERRUPT:
      /* STI delays interrupts by one instruction, so none is taken before
       * HLT and lost. */
      __asm__ volatile("sti\n\thlt\n\tcli" : : : "memory");
      return 0;
    case RT_CALL_INSTALL_TRAMPOLINE:
      install_trampoline();
      return 0;
    default:
      return UINT64_MAX;
  }
}

/* Register frame pushed by stub_exception_common, lowest address first. */
struct exception_frame {
  uint64_t r15, r14, r13, r12, r11, r10, r9, r8, rbp, rdi, rsi, rdx, rcx, rbx, rax;
  uint64_t vector, error_code, rip, cs, rflags, rsp, ss;
};

static char* append_text(char* out, const char* text) {
  while (*text) *out++ = *text++;
  return out;
}

static char* append_hex(char* out, uint64_t value) {
  static const char digits[] = "0123456789abcdef";
  out = append_text(out, "0x");
  int shift = 60;
  while (shift > 0 && ((value >> shift) & 0xf) == 0) shift -= 4;
  for (; shift >= 0; shift -= 4) *out++ = digits[(value >> shift) & 0xf];
  return out;
}

/* Prints one line describing the exception and stops the VM with
 * RT_EXIT_EXCEPTION. */
__attribute__((noreturn)) void stub_report_exception(const struct exception_frame* frame) {
  uint64_t cr2;
  __asm__ volatile("mov %%cr2, %0" : "=r"(cr2));
  char line[256];
  char* out = append_text(line, "stub: unexpected exception ");
  out = append_hex(out, frame->vector);
  out = append_text(out, " on APIC ID ");
  out = append_hex(out, stub_lapic_read(RT_LAPIC_ID) >> 24);
  out = append_text(out, " at CPL ");
  out = append_hex(out, frame->cs & 3);
  out = append_text(out, ": rip ");
  out = append_hex(out, frame->rip);
  out = append_text(out, ", error code ");
  out = append_hex(out, frame->error_code);
  out = append_text(out, ", cr2 ");
  out = append_hex(out, cr2);
  out = append_text(out, ", rsp ");
  out = append_hex(out, frame->rsp);
  out = append_text(out, "\n");
  stub_console_write(line, (size_t)(out - line));
  stub_exit(RT_EXIT_EXCEPTION);
}
