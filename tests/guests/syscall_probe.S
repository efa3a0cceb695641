/*
 * syscall_probe: tells whether this host runs guest user mode correctly.
 * It sets EFER.SCE, STAR, LSTAR and SFMASK, drops to ring 3 and executes
 * SYSCALL. The LSTAR target reads the privilege level from CS and stops the
 * VM with one of these exit codes:
 *   0  SYSCALL arrived at CPL0, as the architecture requires.
 *   1  SYSCALL arrived at CPL3 (seen under kvm_pvm), so a Linux guest's
 *      userspace cannot run.
 *   2  An unexpected exception happened.
 * It prints nothing. It is self-contained and independent of the runtime, so
 * the VMM can embed it, and about 35 CPL0 instructions run before SYSCALL.
 * The descriptor tables are static data, with the address fields the
 * assembler cannot split computed by the linker script.
 *
 * The exit goes through the forkvmm debug device (MMIO, any CPL) on the
 * forkvmm entry. On the Xen PVH entry (QEMU) it goes through QEMU's
 * isa-debug-exit at port 0xf4, reached from CPL0 through INT3.
 */
#include "abi.h"

#define PLATFORM_FORKVMM 1
#define PLATFORM_PVH 2
#define MSR_EFER 0xc0000080
#define MSR_STAR 0xc0000081
#define MSR_LSTAR 0xc0000082
#define MSR_SFMASK 0xc0000084
#define EFER_SCE 0x001
#define EFER_LME 0x100
/* SFMASK clears TF, IF, DF and AC on SYSCALL. */
#define SFMASK_VALUE 0x40700
#define TABLE_ENTRY 0x7        /* present, writable, user */
#define LARGE_USER_PAGE 0x87   /* present, writable, user, 2 MiB */
#define LARGE_DEVICE_PAGE 0x9f /* as above, write-through, uncached */
#define DEBUG_DEVICE_PAGE (RT_DEBUG_DEVICE_ADDRESS & ~0x1fffff)
#define DEBUG_DEVICE_INDEX ((RT_DEBUG_DEVICE_ADDRESS >> 21) & 511)
#define PROBE_TSS_SELECTOR 0x38

/* Page tables: identity map of the first 2 MiB (the probe) and of the debug
 * device's 2 MiB page, all user pages. MOVL works in 32- and 64-bit mode,
 * and the upper halves stay zero from .bss. */
.macro fill_page_tables
	movl $(probe_pdpt + TABLE_ENTRY), probe_pml4
	movl $(probe_pd_low + TABLE_ENTRY), probe_pdpt
	movl $(probe_pd_device + TABLE_ENTRY), probe_pdpt + 3 * 8
	movl $LARGE_USER_PAGE, probe_pd_low
	movl $(DEBUG_DEVICE_PAGE + LARGE_DEVICE_PAGE), probe_pd_device + DEBUG_DEVICE_INDEX * 8
.endm

	.section .note.pvh, "a", @note
	.p2align 2
	.long 4, 4, 18   /* name size, descriptor size, XEN_ELFNOTE_PHYS32_ENTRY */
	.asciz "Xen"
	.p2align 2
	.long probe_pvh_start32

	.text
	.code64
	.globl _start
/* forkvmm entry: 64-bit mode on the VMM's identity map. */
_start:
	mov $PLATFORM_FORKVMM, %r12d
	fill_page_tables
	mov $probe_pml4, %eax
	mov %rax, %cr3
probe_common64:
	lgdt probe_gdt_pointer
	lidt probe_idt_pointer
	mov $PROBE_TSS_SELECTOR, %ax
	ltr %ax
	mov $MSR_EFER, %ecx
	rdmsr
	or $EFER_SCE, %eax
	wrmsr
	mov $MSR_STAR, %ecx
	xor %eax, %eax
	/* STAR[47:32] is the SYSCALL CS (SS = CS + 8), STAR[63:48] the SYSRET
	 * base. */
	mov $((RT_SELECTOR_USER_CODE32 << 16) | RT_SELECTOR_KERNEL_CODE), %edx
	wrmsr
	mov $MSR_LSTAR, %ecx
	mov $probe_syscall_target, %eax
	xor %edx, %edx
	wrmsr
	mov $MSR_SFMASK, %ecx
	mov $SFMASK_VALUE, %eax
	wrmsr
	push $RT_SELECTOR_USER_DATA
	push $probe_user_stack_top
	push $0x2                 /* RFLAGS: reserved bit only, interrupts off */
	push $RT_SELECTOR_USER_CODE
	push $probe_user
	iretq

probe_user:
	syscall
	ud2

/* Exit code in EAX: 0 at CPL0, 1 at CPL3. */
probe_syscall_target:
	mov %cs, %eax
	and $3, %eax
	setnz %al
	movzbl %al, %eax
	cmp $PLATFORM_PVH, %r12d
	je 1f
	movabs %eax, RT_DEBUG_DEVICE_ADDRESS + RT_DEBUG_EXIT_OFFSET
2:	pause
	jmp 2b
	/* Port I/O may fault at CPL3, but INT3 gets to CPL0 from any level. */
1:	int3

/* INT3 (vector 3, callable from ring 3): exit with the code in EAX. */
	.globl probe_breakpoint
probe_breakpoint:
	jmp probe_exit

/* Every other exception vector: exit with 2. */
	.globl probe_fault
probe_fault:
	mov $RT_EXIT_EXCEPTION, %eax

/* At CPL0: stop the VM with the code in EAX. */
probe_exit:
	cmp $PLATFORM_PVH, %r12d
	jne 1f
	out %al, $RT_QEMU_EXIT_PORT
1:	movabs %eax, RT_DEBUG_DEVICE_ADDRESS + RT_DEBUG_EXIT_OFFSET
2:	cli
	hlt
	jmp 2b

/* Xen PVH entry: 32-bit protected mode, paging off, no stack. */
	.code32
probe_pvh_start32:
	lgdt probe_gdt_pointer
	ljmp $RT_SELECTOR_KERNEL_CODE32, $1f
1:	mov $RT_SELECTOR_KERNEL_DATA, %eax
	mov %eax, %ds
	mov %eax, %es
	mov %eax, %ss
	fill_page_tables
	mov %cr4, %eax
	or $0x20, %eax            /* PAE */
	mov %eax, %cr4
	mov $probe_pml4, %eax
	mov %eax, %cr3
	mov $MSR_EFER, %ecx
	rdmsr
	or $EFER_LME, %eax
	wrmsr
	mov %cr0, %eax
	or $0x80000001, %eax      /* PG, PE */
	mov %eax, %cr0
	ljmp $RT_SELECTOR_KERNEL_CODE, $probe_pvh_start64
	.code64
probe_pvh_start64:
	mov $PLATFORM_PVH, %r12d
	jmp probe_common64

	.data
	.p2align 3
/* The runtime's selectors (abi.h), with one TSS at 0x38. */
probe_gdt:
	.quad 0
	.quad 0x00cf9a000000ffff  /* 0x08 kernel code, 32-bit */
	.quad 0x00af9a000000ffff  /* 0x10 kernel code, 64-bit */
	.quad 0x00cf92000000ffff  /* 0x18 kernel data */
	.quad 0x00cffa000000ffff  /* 0x20 user code, 32-bit */
	.quad 0x00cff2000000ffff  /* 0x28 user data */
	.quad 0x00affa000000ffff  /* 0x30 user code, 64-bit */
	/* 0x38: available 64-bit TSS, limit 103 */
	.word 103
	.word PROBE_TSS_BASE_0_15
	.byte PROBE_TSS_BASE_16_23
	.byte 0x89
	.byte 0
	.byte PROBE_TSS_BASE_24_31
	.long 0
	.long 0
probe_gdt_end:

	.p2align 3
probe_gdt_pointer:
	.word probe_gdt_end - probe_gdt - 1
	.quad probe_gdt
probe_idt_pointer:
	.word probe_idt_end - probe_idt - 1
	.quad probe_idt

/* IDT gates for vectors 0-31 (Intel SDM vol. 3, 6.14.1). The handlers lie
 * below 4 GiB, so the upper offset is zero. */
.macro gate low, middle, type
	.word \low
	.word RT_SELECTOR_KERNEL_CODE
	.byte 0
	.byte \type
	.word \middle
	.long 0
	.long 0
.endm
	.p2align 4
probe_idt:
	.rept 3
	gate PROBE_FAULT_0_15, PROBE_FAULT_16_31, 0x8e
	.endr
	gate PROBE_BREAKPOINT_0_15, PROBE_BREAKPOINT_16_31, 0xee
	.rept 28
	gate PROBE_FAULT_0_15, PROBE_FAULT_16_31, 0x8e
	.endr
probe_idt_end:

/* 64-bit TSS (Intel SDM vol. 3, 7.7): only RSP0 is used. */
	.p2align 4
	.globl probe_tss
probe_tss:
	.long 0
	.quad probe_kernel_stack_top
	.fill 104 - 12, 1, 0

	.bss
	.p2align 12
probe_pml4:
	.skip 4096
probe_pdpt:
	.skip 4096
probe_pd_low:
	.skip 4096
probe_pd_device:
	.skip 4096
	.p2align 4
	.skip 512
probe_kernel_stack_top:
	.skip 512
probe_user_stack_top:

	.section .note.GNU-stack, "", @progbits
