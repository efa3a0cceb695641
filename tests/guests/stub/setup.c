/*
 * CPU setup at CPL0 and the drop to ring 3: the BSP from stub_main after
 * either boot entry, each AP from stub_ap_main after the trampoline.
 */
#include "stub.h"

#define MSR_KVM_SYSTEM_TIME 0x12
#define MSR_KVM_SYSTEM_TIME_NEW 0x4b564d01
#define KVM_FEATURE_CLOCKSOURCE (1u << 0)
#define KVM_FEATURE_CLOCKSOURCE2 (1u << 3)
#define LAPIC_SVR_ENABLE 0x100
#define RFLAGS_RESERVED 0x2
#define RFLAGS_INTERRUPT 0x200
#define GATE_INTERRUPT 0x8e
#define GATE_USER (3 << 5)

/* 64-bit TSS (Intel SDM vol. 3, 7.7). */
struct tss {
  uint32_t reserved0;
  uint64_t rsp[3];
  uint64_t reserved1;
  uint64_t ist[7];
  uint64_t reserved2;
  uint16_t reserved3;
  uint16_t io_map_base;
} __attribute__((packed));

/* 64-bit IDT gate descriptor (Intel SDM vol. 3, 6.14.1). */
struct idt_gate {
  uint16_t offset_low;
  uint16_t selector;
  uint8_t ist;
  uint8_t type;
  uint16_t offset_middle;
  uint32_t offset_high;
  uint32_t reserved;
};

struct table_pointer {
  uint16_t limit;
  uint64_t base;
} __attribute__((packed));

/* Flat segments (Intel SDM vol. 3, 3.4.5): G=1, limit 0xfffff; L=1 for
 * 64-bit code; DPL 3 for the user entries. The TSS descriptors follow. */
uint64_t stub_gdt[RT_GDT_ENTRIES] __attribute__((aligned(16))) = {
    0,
    0x00cf9a000000ffffull, /* 0x08 kernel code, 32-bit */
    0x00af9a000000ffffull, /* 0x10 kernel code, 64-bit */
    0x00cf92000000ffffull, /* 0x18 kernel data */
    0x00cffa000000ffffull, /* 0x20 user code, 32-bit, unused but for the SYSRET layout */
    0x00cff2000000ffffull, /* 0x28 user data */
    0x00affa000000ffffull, /* 0x30 user code, 64-bit */
};

static struct tss tss[RT_MAX_CPUS];
static struct idt_gate idt[256] __attribute__((aligned(16)));
uint8_t stub_kernel_stacks[RT_MAX_CPUS][RT_KERNEL_STACK_BYTES] __attribute__((aligned(16)));
/* The kvmclock MSR to program on each CPU, or 0 without kvmclock. */
static uint32_t kvmclock_msr;

static void set_gate(uint32_t vector, uint64_t handler, uint8_t type) {
  struct idt_gate* gate = &idt[vector];
  gate->offset_low = (uint16_t)handler;
  gate->selector = RT_SELECTOR_KERNEL_CODE;
  gate->type = type;
  gate->offset_middle = (uint16_t)(handler >> 16);
  gate->offset_high = (uint32_t)(handler >> 32);
}

/* Vectors without a gate raise #NP, which the exception report shows. */
static void build_idt(void) {
  for (uint32_t vector = 0; vector < 32; ++vector) {
    set_gate(vector, stub_exception_entries[vector], GATE_INTERRUPT);
  }
  set_gate(RT_VECTOR_BREAKPOINT, (uint64_t)stub_breakpoint_entry, GATE_INTERRUPT | GATE_USER);
  for (uint32_t irq = 0; irq < RT_DEVICE_IRQS; ++irq) {
    set_gate(RT_VECTOR_DEVICE_IRQ_BASE + irq, stub_device_irq_entries[irq], GATE_INTERRUPT);
  }
  for (uint32_t cpu = 0; cpu < RT_MAX_CPUS; ++cpu) {
    set_gate(RT_VECTOR_TIMER_BASE + cpu, stub_timer_entries[cpu], GATE_INTERRUPT);
  }
  set_gate(RT_VECTOR_SPURIOUS, (uint64_t)stub_spurious_entry, GATE_INTERRUPT);
}

static uint32_t find_kvmclock_msr(void) {
  uint32_t eax, ebx, ecx, edx;
  stub_cpuid(0x40000000, &eax, &ebx, &ecx, &edx);
  /* "KVMKVMKVM\0\0\0" */
  if (ebx != 0x4b4d564b || ecx != 0x564b4d56 || edx != 0x4d || eax < 0x40000001) return 0;
  stub_cpuid(0x40000001, &eax, &ebx, &ecx, &edx);
  if (eax & KVM_FEATURE_CLOCKSOURCE2) return MSR_KVM_SYSTEM_TIME_NEW;
  if (eax & KVM_FEATURE_CLOCKSOURCE) return MSR_KVM_SYSTEM_TIME;
  return 0;
}

/* The 8259 PICs stay masked: all interrupts come through the APICs. */
static void mask_pic(void) {
  stub_outb(0x21, 0xff);
  stub_outb(0xa1, 0xff);
}

static void load_descriptor_tables(uint32_t cpu) {
  struct tss* task = &tss[cpu];
  task->rsp[0] = (uint64_t)stub_kernel_stacks[cpu] + RT_KERNEL_STACK_BYTES;
  task->io_map_base = sizeof(struct tss); /* no I/O bitmap: ring-3 port I/O faults */

  uint64_t base = (uint64_t)task;
  uint64_t limit = sizeof(struct tss) - 1;
  uint32_t index = RT_SELECTOR_TSS_BASE / 8 + 2 * cpu;
  /* Present, DPL 0, type 9 (available 64-bit TSS). */
  stub_gdt[index] = (limit & 0xffff) | (base & 0xffffff) << 16 | 0x89ull << 40 |
                    ((limit >> 16) & 0xf) << 48 | ((base >> 24) & 0xff) << 56;
  stub_gdt[index + 1] = base >> 32;

  struct table_pointer gdt_pointer = {sizeof(stub_gdt) - 1, (uint64_t)stub_gdt};
  struct table_pointer idt_pointer = {sizeof(idt) - 1, (uint64_t)idt};
  uint16_t tss_selector = (uint16_t)(RT_SELECTOR_TSS_BASE + 16 * cpu);
  __asm__ volatile(
      "lgdt %0\n\t"
      "lidt %1\n\t"
      "ltr %2\n\t"
      "mov %3, %%ds\n\t"
      "mov %3, %%es\n\t"
      "mov %3, %%ss"
      :
      : "m"(gdt_pointer), "m"(idt_pointer), "r"(tss_selector), "r"(RT_SELECTOR_KERNEL_DATA)
      : "memory");
}

static void setup_cpu(uint32_t cpu) {
  load_descriptor_tables(cpu);
  stub_lapic_write(RT_LAPIC_TPR, 0);
  stub_lapic_write(RT_LAPIC_SVR, LAPIC_SVR_ENABLE | RT_VECTOR_SPURIOUS);
  if (kvmclock_msr != 0) stub_wrmsr(kvmclock_msr, (uint64_t)&rt_pvclock[cpu] | 1);
}

/* Continues at `entry` in ring 3 on this CPU's user stack, RDI = cpu, with
 * interrupts enabled. */
__attribute__((noreturn)) static void enter_user(void (*entry)(void), uint32_t cpu) {
  uint64_t stack_top = (uint64_t)rt_user_stacks[cpu] + RT_USER_STACK_BYTES;
  __asm__ volatile(
      "mov %[data], %%ds\n\t"
      "mov %[data], %%es\n\t"
      "pushq %[ss]\n\t"
      "pushq %[stack]\n\t"
      "pushq %[flags]\n\t"
      "pushq %[cs]\n\t"
      "pushq %[rip]\n\t"
      "iretq"
      :
      : [data] "r"(RT_SELECTOR_USER_DATA), [ss] "i"(RT_SELECTOR_USER_DATA), [stack] "r"(stack_top),
        [flags] "i"(RFLAGS_RESERVED | RFLAGS_INTERRUPT), [cs] "i"(RT_SELECTOR_USER_CODE),
        [rip] "r"((uint64_t)entry), "D"((uint64_t)cpu)
      : "memory");
  __builtin_unreachable();
}

__attribute__((noreturn)) void stub_main(uint32_t protocol, uint64_t info) {
  stub_read_boot_info(protocol, info);
  stub_setup_paging();
  uint32_t cpu = stub_lapic_read(RT_LAPIC_ID) >> 24;
  if (cpu >= RT_MAX_CPUS) {
    static const char message[] = "stub: the BSP's APIC ID is beyond RT_MAX_CPUS\n";
    stub_console_write(message, sizeof(message) - 1);
    stub_exit(RT_EXIT_UNSUPPORTED);
  }
  rt_boot_info.bsp_apic_id = cpu;
  build_idt();
  mask_pic();
  kvmclock_msr = find_kvmclock_msr();
  rt_boot_info.kvmclock = kvmclock_msr != 0;
  setup_cpu(cpu);
  enter_user(rt_user_entry_bsp, cpu);
}

/* Called from stub_ap_start64 on the AP's kernel stack; `cpu` is its APIC ID,
 * already checked against RT_MAX_CPUS. */
__attribute__((noreturn)) void stub_ap_main(uint32_t cpu) {
  setup_cpu(cpu);
  enter_user(rt_user_entry_ap, cpu);
}
