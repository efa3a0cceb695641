/*
 * Interrupt and exception entry points of the stub, and the tables of their
 * addresses that stub_load_idt() turns into IDT gates.
 *
 * The timer and device-interrupt handlers only count: each increments one
 * 64-bit counter in ring-3 memory and signals end of interrupt, so an
 * interrupt costs a handful of CPL0 instructions.
 */
#include "abi.h"

	.text
	.code64
	.altmacro

/* Exceptions: push a zero where the CPU pushes no error code, then the
 * vector, and report. Vectors with an error code: Intel SDM vol. 3, 6.15. */
.macro exception vector
stub_exception_\vector:
	.if (\vector == 8) || (\vector >= 10 && \vector <= 14) || (\vector == 17) || (\vector == 21) || (\vector == 29) || (\vector == 30)
	.else
	push $0
	.endif
	push $\vector
	jmp stub_exception_common
.endm

	.set vector, 0
	.rept 32
	exception %vector
	.set vector, vector + 1
	.endr

/* Stack on entry: vector, error code, RIP, CS, RFLAGS, RSP, SS. */
stub_exception_common:
	push %rax
	push %rbx
	push %rcx
	push %rdx
	push %rsi
	push %rdi
	push %rbp
	push %r8
	push %r9
	push %r10
	push %r11
	push %r12
	push %r13
	push %r14
	push %r15
	mov %rsp, %rdi
	and $-16, %rsp
	call stub_report_exception
	jmp stub_park

/*
 * INT3 from ring 3: the call gate into the stub (see RT_CALL_* in abi.h).
 * The CPU pushed five words onto a 16-byte-aligned stack; eight pushes and
 * eight more bytes leave it aligned for the call.
 */
	.globl stub_breakpoint_entry
stub_breakpoint_entry:
	push %rcx
	push %rdx
	push %rsi
	push %rdi
	push %r8
	push %r9
	push %r10
	push %r11
	sub $8, %rsp
	mov %rdx, %rcx
	mov %rsi, %rdx
	mov %rdi, %rsi
	mov %rax, %rdi
	call stub_handle_call
	add $8, %rsp
	pop %r11
	pop %r10
	pop %r9
	pop %r8
	pop %rdi
	pop %rsi
	pop %rdx
	pop %rcx
	iretq

/* Per-CPU LAPIC timer handlers: CPU i counts rt_cpu_ticks[i]. */
.macro timer cpu
stub_timer_\cpu:
	incq rt_cpu_ticks + 8 * \cpu(%rip)
	jmp stub_end_of_interrupt
.endm

	.set cpu, 0
	.rept RT_MAX_CPUS
	timer %cpu
	.set cpu, cpu + 1
	.endr

/* IOAPIC input n counts rt_irq_counts[n]. */
.macro device_irq irq
stub_device_irq_\irq:
	incq rt_irq_counts + 8 * \irq(%rip)
	jmp stub_end_of_interrupt
.endm

	.set irq, 0
	.rept RT_DEVICE_IRQS
	device_irq %irq
	.set irq, irq + 1
	.endr

stub_end_of_interrupt:
	push %rax
	xor %eax, %eax
	movabs %eax, RT_LAPIC_ADDRESS + RT_LAPIC_EOI
	pop %rax
	iretq

/* A spurious interrupt needs no end-of-interrupt (Intel SDM vol. 3, 11.9). */
	.globl stub_spurious_entry
stub_spurious_entry:
	iretq

	.section .rodata
	.p2align 3
	.globl stub_exception_entries, stub_timer_entries, stub_device_irq_entries
.macro entry_address prefix, index
	.quad \prefix\index
.endm

stub_exception_entries:
	.set vector, 0
	.rept 32
	entry_address stub_exception_, %vector
	.set vector, vector + 1
	.endr
stub_timer_entries:
	.set cpu, 0
	.rept RT_MAX_CPUS
	entry_address stub_timer_, %cpu
	.set cpu, cpu + 1
	.endr
stub_device_irq_entries:
	.set irq, 0
	.rept RT_DEVICE_IRQS
	entry_address stub_device_irq_, %irq
	.set irq, irq + 1
	.endr

	.section .note.GNU-stack, "", @progbits
