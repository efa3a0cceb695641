/*
 * A guest that answers one question: does SYSCALL from user mode (CPL3)
 * reach the guest kernel at CPL0? An unmodified Linux guest needs it for its
 * first system call; on kvm_pvm it lands at LSTAR still at CPL3.
 *
 * Entered by forkvmm in 64-bit mode at CPL0 (Linux 64-bit boot protocol).
 * It builds its own GDT, TSS, IDT and user-accessible identity page tables,
 * enables SYSCALL, drops to CPL3 and executes SYSCALL. The LSTAR handler
 * reports through the forkvmm debug device's exit register:
 *   0  SYSCALL arrived at CPL0 (guest userspace works)
 *   1  SYSCALL arrived at CPL3 (guest userspace cannot make system calls)
 *   2  an exception happened instead
 */
#define DEBUG_EXIT 0xfeb00008
#define KERNEL_CS 0x08
#define KERNEL_DS 0x10
#define USER_DS 0x18
#define USER_CS 0x20
#define TSS_SEL 0x28
#define MSR_EFER 0xc0000080
#define MSR_STAR 0xc0000081
#define MSR_LSTAR 0xc0000082
#define MSR_SFMASK 0xc0000084

    .code64
    .section .text
    .globl _start
_start:
    /* Identity-map 4 GiB with user-accessible 2 MiB pages. */
    lea pdpt(%rip), %rax
    or $0x7, %rax
    mov %rax, pml4(%rip)
    lea pd(%rip), %rdi
    lea pdpt(%rip), %rsi
    xor %ecx, %ecx
1:  mov %rdi, %rax
    or $0x7, %rax
    mov %rax, (%rsi,%rcx,8)
    add $0x1000, %rdi
    inc %ecx
    cmp $4, %ecx
    jne 1b
    lea pd(%rip), %rdi
    mov $0x87, %eax                 /* present, writable, user, 2 MiB */
    mov $2048, %ecx
2:  mov %rax, (%rdi)
    add $0x200000, %rax
    add $8, %rdi
    dec %ecx
    jnz 2b
    lea pml4(%rip), %rax
    mov %rax, %cr3

    /* TSS descriptor: base = tss, limit = 0x67, type 0x89 (available). */
    lea tss(%rip), %rax
    lea gdt_tss(%rip), %rdi
    movw $0x67, (%rdi)
    mov %ax, 2(%rdi)
    shr $16, %rax
    mov %al, 4(%rdi)
    movb $0x89, 5(%rdi)
    movb $0, 6(%rdi)
    mov %ah, 7(%rdi)
    shr $16, %rax
    mov %eax, 8(%rdi)
    movl $0, 12(%rdi)
    lea kernel_stack_top(%rip), %rax
    mov %rax, tss+4(%rip)           /* RSP0 */

    lgdt gdt_pointer(%rip)
    mov $KERNEL_DS, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    lea 3f(%rip), %rax
    pushq $KERNEL_CS
    push %rax
    lretq
3:  mov $TSS_SEL, %ax
    ltr %ax

    /* Every exception vector exits with code 2. */
    lea idt(%rip), %rdi
    lea exception(%rip), %rdx
    xor %ecx, %ecx
4:  mov %dx, (%rdi)
    movw $KERNEL_CS, 2(%rdi)
    movw $0x8e00, 4(%rdi)           /* present, DPL 0, 64-bit interrupt gate */
    mov %rdx, %rax
    shr $16, %rax
    mov %ax, 6(%rdi)
    shr $16, %rax
    mov %eax, 8(%rdi)
    movl $0, 12(%rdi)
    add $16, %rdi
    inc %ecx
    cmp $32, %ecx
    jne 4b
    lidt idt_pointer(%rip)

    /* SYSCALL: enable it and point it at syscall_entry. */
    mov $MSR_EFER, %ecx
    rdmsr
    or $1, %eax
    wrmsr
    mov $MSR_STAR, %ecx
    xor %eax, %eax
    mov $((KERNEL_DS << 16) | KERNEL_CS), %edx
    wrmsr
    mov $MSR_LSTAR, %ecx
    lea syscall_entry(%rip), %rax
    mov %rax, %rdx
    shr $32, %rdx
    wrmsr
    mov $MSR_SFMASK, %ecx
    mov $0x700, %eax                /* clear TF, IF and DF on entry */
    xor %edx, %edx
    wrmsr

    /* Drop to CPL3 at user_code. */
    lea user_stack_top(%rip), %rax
    pushq $(USER_DS | 3)
    push %rax
    pushq $0x2
    pushq $(USER_CS | 3)
    lea user_code(%rip), %rax
    push %rax
    iretq

user_code:
    syscall
    jmp user_code

syscall_entry:
    mov %cs, %eax
    and $3, %eax
    setnz %al
    movzbl %al, %eax
    mov $DEBUG_EXIT, %rdi
    movl %eax, (%rdi)
5:  jmp 5b

exception:
    mov $DEBUG_EXIT, %rdi
    movl $2, (%rdi)
6:  jmp 6b

    .section .data
    .balign 16
gdt:
    .quad 0
    .quad 0x00af9a000000ffff        /* 0x08 kernel code, 64-bit */
    .quad 0x00cf92000000ffff        /* 0x10 kernel data */
    .quad 0x00cff2000000ffff        /* 0x18 user data, DPL 3 */
    .quad 0x00affa000000ffff        /* 0x20 user code, 64-bit, DPL 3 */
gdt_tss:
    .quad 0, 0                      /* 0x28 TSS, filled in at run time */
gdt_end:
gdt_pointer:
    .word gdt_end - gdt - 1
    .quad gdt
idt_pointer:
    .word 32 * 16 - 1
    .quad idt

    .section .bss
    .balign 4096
pml4: .skip 4096
pdpt: .skip 4096
pd: .skip 4 * 4096
idt: .skip 32 * 16
tss: .skip 0x68
    .balign 16
    .skip 4096
kernel_stack_top:
    .skip 4096
user_stack_top:
