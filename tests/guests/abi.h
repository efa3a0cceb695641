/*
 * The interface between the CPL0 stub (stub/) and the ring-3 library (lib/)
 * of the forkvmm test guests: addresses, interrupt vectors, the INT3 call
 * numbers and the boot information the stub hands to ring 3.
 *
 * Included from C and from assembly, so everything outside the
 * __ASSEMBLER__ block is a plain #define.
 */
#ifndef FORKVMM_TESTS_GUESTS_ABI_H
#define FORKVMM_TESTS_GUESTS_ABI_H

/* The runtime supports this many CPUs, indexed by local APIC ID. A CPU whose
 * APIC ID is RT_MAX_CPUS or more parks itself at CPL0. */
#define RT_MAX_CPUS 16
#define RT_MAX_RAM_RANGES 32

/* Bytes of the per-CPU stacks. */
#define RT_KERNEL_STACK_BYTES 8192
#define RT_USER_STACK_BYTES 16384

/* Where the AP start-up code is copied: a page below 1 MiB, so the
 * startup-IPI vector is its page number. On the forkvmm boot path this page
 * held the boot stack, which the BSP has left by then. */
#define RT_TRAMPOLINE_ADDRESS 0x8000

/* GDT selectors. 0x10 and 0x18 match the Linux 64-bit boot protocol, so the
 * code segment stays valid when the stub loads its own GDT. User code sits
 * 16 bytes above user data as SYSRET requires (Intel SDM vol. 2, SYSRET). */
#define RT_SELECTOR_KERNEL_CODE32 0x08
#define RT_SELECTOR_KERNEL_CODE 0x10
#define RT_SELECTOR_KERNEL_DATA 0x18
#define RT_SELECTOR_USER_CODE32 0x23
#define RT_SELECTOR_USER_DATA 0x2b
#define RT_SELECTOR_USER_CODE 0x33
/* The TSS descriptor of CPU i is at RT_SELECTOR_TSS_BASE + 16 * i. */
#define RT_SELECTOR_TSS_BASE 0x38
#define RT_GDT_ENTRIES (7 + 2 * RT_MAX_CPUS)

/* Interrupt vectors. */
#define RT_VECTOR_BREAKPOINT 3
/* IOAPIC input n is routed to vector RT_VECTOR_DEVICE_IRQ_BASE + n, n < 16. */
#define RT_VECTOR_DEVICE_IRQ_BASE 0x20
#define RT_DEVICE_IRQS 16
/* The LAPIC timer of CPU i interrupts on vector RT_VECTOR_TIMER_BASE + i. */
#define RT_VECTOR_TIMER_BASE 0x30
#define RT_VECTOR_SPURIOUS 0xff

/* Physical addresses of devices. */
#define RT_DEBUG_DEVICE_ADDRESS 0xfeb00000
#define RT_DEBUG_CONSOLE_OFFSET 0x00
#define RT_DEBUG_EXIT_OFFSET 0x08
/* forkvmm's virtio-mmio windows: device i at RT_VIRTIO_MMIO_ADDRESS +
 * i * RT_VIRTIO_MMIO_STRIDE, raising IOAPIC input 5 + i. The stub maps the
 * 2 MiB page containing them for ring 3. */
#define RT_VIRTIO_MMIO_ADDRESS 0xd0000000
#define RT_VIRTIO_MMIO_STRIDE 0x1000
#define RT_IOAPIC_ADDRESS 0xfec00000
#define RT_LAPIC_ADDRESS 0xfee00000
#define RT_DEBUGCON_PORT 0xe9
/* QEMU's isa-debug-exit, when given iobase=0xf4. */
#define RT_QEMU_EXIT_PORT 0xf4

/* Local APIC register offsets (Intel SDM vol. 3, table 11-1). */
#define RT_LAPIC_ID 0x20
#define RT_LAPIC_TPR 0x80
#define RT_LAPIC_EOI 0xb0
#define RT_LAPIC_SVR 0xf0
#define RT_LAPIC_ICR_LOW 0x300
#define RT_LAPIC_ICR_HIGH 0x310
#define RT_LAPIC_LVT_TIMER 0x320
#define RT_LAPIC_TIMER_INITIAL 0x380
#define RT_LAPIC_TIMER_CURRENT 0x390
#define RT_LAPIC_TIMER_DIVIDE 0x3e0

/* Exit codes shared by all guests. */
#define RT_EXIT_PASS 0
#define RT_EXIT_FAIL 1
#define RT_EXIT_EXCEPTION 2
#define RT_EXIT_UNSUPPORTED 3

/* How the guest was entered. */
#define RT_BOOT_FORKVMM 1 /* 64-bit entry at e_entry, RSI = struct boot_params */
#define RT_BOOT_PVH 2     /* Xen PVH 32-bit entry, EBX = struct hvm_start_info */

/*
 * Calls from ring 3 into the stub: INT3 with the call number in RAX and up to
 * three arguments in RDI, RSI and RDX. The result comes back in RAX, and every
 * other register is preserved.
 */
#define RT_CALL_EXIT 0              /* (code): stop the VM */
#define RT_CALL_CONSOLE_WRITE 1     /* (buffer, length): boot console */
#define RT_CALL_PORT_READ8 2        /* (port) -> byte */
#define RT_CALL_PORT_WRITE8 3       /* (port, byte) */
#define RT_CALL_LAPIC_READ 4        /* (register offset) -> value */
#define RT_CALL_LAPIC_WRITE 5       /* (register offset, value) */
#define RT_CALL_IOAPIC_READ 6       /* (register index) -> value */
#define RT_CALL_IOAPIC_WRITE 7      /* (register index, value) */
#define RT_CALL_SERIAL_WRITE 8      /* (buffer, length): 16550 at port 0x3f8 */
#define RT_CALL_WAIT_FOR_INTERRUPT 9 /* (): HLT with interrupts enabled */
#define RT_CALL_INSTALL_TRAMPOLINE 10 /* (): copy the AP start-up code */
#define RT_CALL_COUNT 11

#ifndef __ASSEMBLER__
#include <stdint.h>

struct rt_ram_range {
  uint64_t start;
  uint64_t end; /* exclusive */
};

/* Boot information, filled in by the stub before ring 3 starts and
 * read-only for ring 3. */
struct rt_boot_info {
  uint32_t protocol; /* RT_BOOT_FORKVMM or RT_BOOT_PVH */
  uint32_t bsp_apic_id;
  /* Physical address of the NUL-terminated command line, or 0. It lies in
   * ordinary RAM, which a memory test may overwrite. */
  uint64_t command_line;
  /* RAM ranges of the firmware memory map (e820 type 1) in the order given,
   * clipped to what the stub could map. */
  uint32_t ram_range_count;
  /* Memory-map entries beyond RT_MAX_RAM_RANGES, which were dropped. */
  uint32_t ram_ranges_dropped;
  struct rt_ram_range ram[RT_MAX_RAM_RANGES];
  /* RAM bytes left unmapped because they lie beyond what the page tables
   * cover (see stub/paging.c). */
  uint64_t unmapped_ram_bytes;
  /* The loaded image, stub and ring-3 parts, page-aligned. */
  uint64_t image_start;
  uint64_t image_end;
  /* Nonzero once the AP start-up code has been copied to
   * RT_TRAMPOLINE_ADDRESS. */
  uint32_t trampoline_installed;
  /* Nonzero if the kvmclock MSRs are present and the BSP registered its
   * rt_pvclock entry. */
  uint32_t kvmclock;
  /* Nonzero if RAM above 4 GiB is mapped with 1 GiB pages. */
  uint32_t gigabyte_pages;
};

/* struct pvclock_vcpu_time_info, the kvmclock record KVM updates in guest
 * memory (Linux Documentation/virt/kvm/x86/msr.rst, MSR_KVM_SYSTEM_TIME_NEW). */
struct rt_pvclock {
  uint32_t version;
  uint32_t pad0;
  uint64_t tsc_timestamp;
  uint64_t system_time;
  uint32_t tsc_to_system_mul;
  int8_t tsc_shift;
  uint8_t flags;
  uint8_t pad[2];
} __attribute__((aligned(32)));

/* Shared state in ring-3 pages (lib/), written by the stub. */
extern struct rt_boot_info rt_boot_info;
extern volatile uint64_t rt_cpu_ticks[RT_MAX_CPUS];
extern volatile uint64_t rt_irq_counts[RT_DEVICE_IRQS];
extern struct rt_pvclock rt_pvclock[RT_MAX_CPUS];
extern uint8_t rt_user_stacks[RT_MAX_CPUS][RT_USER_STACK_BYTES];
/* Ring-3 entry points (lib/entry.S), which receive the CPU index in RDI. */
void rt_user_entry_bsp(void);
void rt_user_entry_ap(void);
#endif

#endif
