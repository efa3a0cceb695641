/*
 * Ring-3 entry points. The stub enters them with IRETQ on the CPU's user
 * stack (16-byte aligned) and the CPU index in RDI.
 */
	.text
	.globl rt_user_entry_bsp, rt_user_entry_ap
rt_user_entry_bsp:
	xor %ebp, %ebp
	call rt_start_bsp
	ud2

rt_user_entry_ap:
	xor %ebp, %ebp
	call rt_start_ap
	ud2

	.section .note.GNU-stack, "", @progbits
