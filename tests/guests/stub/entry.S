/*
 * Entry points of the test-guest stub: the forkvmm 64-bit entry, the Xen PVH
 * 32-bit entry (QEMU -kernel), the switch to long mode both the PVH entry and
 * the application processors use, and the real-mode AP trampoline.
 */
#include "abi.h"

#define CR0_PE 0x00000001
#define CR0_PG 0x80000000
#define CR4_PAE 0x20
#define MSR_EFER 0xc0000080
#define EFER_LME 0x100
#define PAGE_PRESENT_WRITABLE 0x3
#define PAGE_LARGE 0x80
/* Xen public/elfnote.h: the 32-bit physical entry point of a PVH kernel. */
#define XEN_ELFNOTE_PHYS32_ENTRY 18

/* The PVH entry note QEMU looks for in the ELF program headers. */
	.section .note.pvh, "a", @note
	.p2align 2
	.long 4                         /* name size: "Xen" and its NUL */
	.long 4                         /* descriptor size */
	.long XEN_ELFNOTE_PHYS32_ENTRY
	.asciz "Xen"
	.p2align 2
	.long pvh_start32

	.text

/*
 * forkvmm entry: 64-bit mode, paging on with an identity map, interrupts off,
 * RSI = struct boot_params.
 */
	.code64
	.globl _start
_start:
	cli
	cld
	mov $stub_boot_stack_top, %rsp
	mov $RT_BOOT_FORKVMM, %edi
	call stub_main
	jmp stub_park

/*
 * Xen PVH entry: 32-bit protected mode, paging off, flat segments with
 * unspecified selectors, no stack, EBX = struct hvm_start_info.
 */
	.code32
	.globl pvh_start32
pvh_start32:
	cli
	cld
	lgdt stub_gdt_pointer
	ljmp $RT_SELECTOR_KERNEL_CODE32, $1f
1:	mov $RT_SELECTOR_KERNEL_DATA, %eax
	mov %eax, %ds
	mov %eax, %es
	mov %eax, %ss
	mov $stub_boot_stack_top, %esp
	mov %ebx, %esi
	mov $stub_bootstrap_pml4, %ebx
	mov $pvh_start64_pointer, %edi
	jmp stub_enter_long_mode

/*
 * Switches from 32-bit protected mode with paging off to 64-bit mode
 * (Intel SDM vol. 3, 9.8.5). EBX = page-table root, EDI = address of a far
 * pointer (32-bit offset, then selector) to the 64-bit code to continue at.
 * ESI is preserved. No stack is used, because an AP arrives without one, and
 * EDX is not an argument because RDMSR overwrites it.
 */
stub_enter_long_mode:
	mov %cr4, %eax
	or $CR4_PAE, %eax
	mov %eax, %cr4
	mov %ebx, %cr3
	mov $MSR_EFER, %ecx
	rdmsr
	or $EFER_LME, %eax
	wrmsr
	mov %cr0, %eax
	or $(CR0_PG | CR0_PE), %eax
	mov %eax, %cr0
	/* Paging is on in compatibility mode; a far jump into the 64-bit
	 * code segment enters 64-bit mode. */
	ljmpl *(%edi)

	.code64
pvh_start64:
	mov $stub_boot_stack_top, %rsp
	mov %esi, %esi
	mov $RT_BOOT_PVH, %edi
	call stub_main
	jmp stub_park

/* An AP arrives here in 64-bit mode on the final page tables. */
stub_ap_start64:
	movabs RT_LAPIC_ADDRESS + RT_LAPIC_ID, %eax
	shr $24, %eax
	cmp $RT_MAX_CPUS, %eax
	jae stub_park
	mov %eax, %edi
	lea 1(%rax), %rcx
	imul $RT_KERNEL_STACK_BYTES, %rcx, %rcx
	lea stub_kernel_stacks(%rcx), %rsp
	call stub_ap_main

	.globl stub_park
stub_park:
	cli
	hlt
	jmp stub_park

/*
 * The AP trampoline, copied to RT_TRAMPOLINE_ADDRESS. A startup IPI with
 * vector RT_TRAMPOLINE_ADDRESS >> 12 starts the AP here in real mode with
 * CS = RT_TRAMPOLINE_ADDRESS >> 4 and IP = 0 (Intel SDM vol. 3, 8.4.4.1).
 * Labels inside it are used only as offsets from its start.
 */
	.section .rodata
	.code16
	.globl stub_trampoline_start, stub_trampoline_end
stub_trampoline_start:
	cli
	cld
	mov %cs, %ax
	mov %ax, %ds
	lgdtl trampoline_gdt_pointer - stub_trampoline_start
	mov %cr0, %eax
	or $CR0_PE, %eax
	mov %eax, %cr0
	ljmpl $RT_SELECTOR_KERNEL_CODE32, $(RT_TRAMPOLINE_ADDRESS + trampoline32 - stub_trampoline_start)
	.code32
trampoline32:
	mov $RT_SELECTOR_KERNEL_DATA, %eax
	mov %eax, %ds
	mov %eax, %es
	mov %eax, %ss
	mov $stub_pml4, %ebx
	mov $stub_ap_start64_pointer, %edi
	mov $stub_enter_long_mode, %eax
	jmp *%eax
	.p2align 2
trampoline_gdt_pointer:
	.word RT_GDT_ENTRIES * 8 - 1
	.long stub_gdt
stub_trampoline_end:
	.code64

/* Far pointers for stub_enter_long_mode. */
	.p2align 3
pvh_start64_pointer:
	.long pvh_start64
	.word RT_SELECTOR_KERNEL_CODE
	.p2align 3
stub_ap_start64_pointer:
	.long stub_ap_start64
	.word RT_SELECTOR_KERNEL_CODE

/* GDT pseudo-descriptor for LGDT in 32-bit mode. */
	.p2align 3
stub_gdt_pointer:
	.word RT_GDT_ENTRIES * 8 - 1
	.long stub_gdt

/*
 * Page tables for the PVH path until stub_main builds the real ones: the
 * first 4 GiB identity-mapped with 2 MiB pages, supervisor only.
 */
	.data
	.p2align 12
stub_bootstrap_pml4:
	.quad stub_bootstrap_pdpt + PAGE_PRESENT_WRITABLE
	.fill 511, 8, 0
stub_bootstrap_pdpt:
	.quad stub_bootstrap_pd + PAGE_PRESENT_WRITABLE
	.quad stub_bootstrap_pd + 0x1000 + PAGE_PRESENT_WRITABLE
	.quad stub_bootstrap_pd + 0x2000 + PAGE_PRESENT_WRITABLE
	.quad stub_bootstrap_pd + 0x3000 + PAGE_PRESENT_WRITABLE
	.fill 508, 8, 0
stub_bootstrap_pd:
	.set page, 0
	.rept 2048
	.quad (page << 21) + PAGE_LARGE + PAGE_PRESENT_WRITABLE
	.set page, page + 1
	.endr

	.bss
	.p2align 4
	.skip 4096
stub_boot_stack_top:

	.section .note.GNU-stack, "", @progbits
