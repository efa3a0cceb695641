/*
 * reset: prints one line and resets the machine through the i8042
 * controller (command 0xfe on port 0x64). forkvmm then stops the VM with exit
 * status 0 and logs "guest reset the machine". If the guest is still running
 * 1 s later, the reset failed and it exits with RT_EXIT_FAIL.
 */
#include "runtime.h"

const char rt_guest_name[] = "reset";

#define I8042_COMMAND 0x64
#define I8042_PULSE_RESET 0xfe

int main(void) {
  rt_printf("reset: resetting through the i8042 controller\n");
  rt_outb(I8042_COMMAND, I8042_PULSE_RESET);
  if (rt_clock_available()) rt_delay_ns(UINT64_C(1000000000));
  rt_fail("the machine did not reset");
}
