/*
 * serial: drives the 16550 UART at port 0x3f8 through the stub (register
 * set-up, scratch register, loopback, line and modem status, transmit, and
 * the THR-empty interrupt through IOAPIC input 4), and reports from ring 3
 * through the debug device's MMIO console.
 *
 * Output, byte for byte on success (forkvmm writes UART and debug-device
 * bytes to the same console, in order):
 *   serial: ring-3 console through MMIO
 *   serial: line 1 through the 16550 UART
 *   serial: line 2 through the 16550 UART
 *   serial: PASS: registers, scratch, loopback, modem status, transmit and THR-empty interrupts
 */
#include "runtime.h"

const char rt_guest_name[] = "serial";

#define COM1 0x3f8
#define UART_DATA (COM1 + 0)
#define UART_INTERRUPT_ENABLE (COM1 + 1)
#define UART_INTERRUPT_ID (COM1 + 2) /* FIFO control on write */
#define UART_LINE_CONTROL (COM1 + 3)
#define UART_MODEM_CONTROL (COM1 + 4)
#define UART_LINE_STATUS (COM1 + 5)
#define UART_MODEM_STATUS (COM1 + 6)
#define UART_SCRATCH (COM1 + 7)
#define UART_IRQ 4

#define LCR_8N1 0x03
#define LCR_DIVISOR_LATCH 0x80
#define FCR_ENABLE_AND_CLEAR 0x07
#define MCR_DTR_RTS_OUT2 0x0b
#define MCR_LOOPBACK 0x10
#define LSR_DATA_READY 0x01
#define LSR_TRANSMIT_EMPTY 0x60 /* THR empty and transmitter idle */
#define MSR_CTS_DSR_DCD 0xb0
#define IER_TRANSMIT_EMPTY 0x02
#define IIR_ID_MASK 0x0f
#define IIR_NONE 0x01
#define IIR_TRANSMIT_EMPTY 0x02
#define INTERRUPT_TIMEOUT_NS UINT64_C(1000000000)

static void expect_byte(const char* description, uint8_t actual, uint8_t expected) {
  if (actual != expected) rt_fail("%s is 0x%x, expected 0x%x", description, actual, expected);
}

/* 115200 baud (divisor 1), 8 data bits, no parity, 1 stop bit, FIFOs on. */
static void configure(void) {
  rt_outb(UART_INTERRUPT_ENABLE, 0);
  rt_outb(UART_LINE_CONTROL, LCR_DIVISOR_LATCH);
  rt_outb(UART_DATA, 1);
  rt_outb(UART_INTERRUPT_ENABLE, 0);
  expect_byte("divisor latch low byte", rt_inb(UART_DATA), 1);
  rt_outb(UART_LINE_CONTROL, LCR_8N1);
  rt_outb(UART_INTERRUPT_ID, FCR_ENABLE_AND_CLEAR);
  rt_outb(UART_MODEM_CONTROL, MCR_DTR_RTS_OUT2);
  expect_byte("line control register", rt_inb(UART_LINE_CONTROL), LCR_8N1);
  expect_byte("transmitter bits of the line status", rt_inb(UART_LINE_STATUS) & LSR_TRANSMIT_EMPTY,
              LSR_TRANSMIT_EMPTY);
}

static void check_scratch(void) {
  rt_outb(UART_SCRATCH, 0xa5);
  expect_byte("scratch register after writing 0xa5", rt_inb(UART_SCRATCH), 0xa5);
  rt_outb(UART_SCRATCH, 0x5a);
  expect_byte("scratch register after writing 0x5a", rt_inb(UART_SCRATCH), 0x5a);
}

/* In loopback mode a transmitted byte is received instead of sent, and the
 * modem control outputs appear as the modem status inputs. */
static void check_loopback(void) {
  rt_outb(UART_MODEM_CONTROL, MCR_DTR_RTS_OUT2 | MCR_LOOPBACK);
  expect_byte("modem status in loopback", rt_inb(UART_MODEM_STATUS) & 0xf0, MSR_CTS_DSR_DCD);
  rt_outb(UART_DATA, 'Z');
  expect_byte("data-ready bit after a looped-back byte", rt_inb(UART_LINE_STATUS) & LSR_DATA_READY,
              LSR_DATA_READY);
  expect_byte("looped-back byte", rt_inb(UART_DATA), 'Z');
  expect_byte("data-ready bit after reading it", rt_inb(UART_LINE_STATUS) & LSR_DATA_READY, 0);
  rt_outb(UART_MODEM_CONTROL, MCR_DTR_RTS_OUT2);
}

static void wait_for_interrupt_count(uint64_t target) {
  uint64_t start = rt_now_ns();
  while (rt_irq_counts[UART_IRQ] < target) {
    if (rt_now_ns() - start > INTERRUPT_TIMEOUT_NS) {
      rt_fail("no interrupt on IRQ %u within 1 s (count %lu, expected %lu)", UART_IRQ,
              rt_irq_counts[UART_IRQ], target);
    }
    rt_pause();
  }
}

/* Enabling the THR-empty interrupt while THR is empty raises it at once.
 * Reading IIR acknowledges it, and transmitting raises it again. */
static void check_transmit_interrupt(void) {
  rt_ioapic_route(UART_IRQ, rt_cpu_id());
  uint64_t before = rt_irq_counts[UART_IRQ];
  rt_outb(UART_INTERRUPT_ENABLE, IER_TRANSMIT_EMPTY);
  wait_for_interrupt_count(before + 1);
  expect_byte("interrupt identification while THR-empty is pending",
              rt_inb(UART_INTERRUPT_ID) & IIR_ID_MASK, IIR_TRANSMIT_EMPTY);
  expect_byte("interrupt identification after acknowledging",
              rt_inb(UART_INTERRUPT_ID) & IIR_ID_MASK, IIR_NONE);
  uint64_t after_first = rt_irq_counts[UART_IRQ];
  static const char line[] = "serial: line 2 through the 16550 UART\n";
  rt_serial_write(line, sizeof(line) - 1);
  wait_for_interrupt_count(after_first + 1);
  rt_outb(UART_INTERRUPT_ENABLE, 0);
}

int main(void) {
  if (!rt_clock_available()) {
    rt_printf("serial: UNSUPPORTED: kvmclock is not available\n");
    return RT_EXIT_UNSUPPORTED;
  }
  rt_printf("serial: ring-3 console through MMIO\n");
  configure();
  check_scratch();
  check_loopback();
  static const char line[] = "serial: line 1 through the 16550 UART\n";
  rt_serial_write(line, sizeof(line) - 1);
  check_transmit_interrupt();
  rt_printf("serial: PASS: registers, scratch, loopback, modem status, transmit and THR-empty "
            "interrupts\n");
  return RT_EXIT_PASS;
}
