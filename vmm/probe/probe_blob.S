/* The syscall probe guest, embedded in the forkvmm binary. */
    .section .rodata
    .balign 16
    .globl forkvmm_syscall_probe_start
    .globl forkvmm_syscall_probe_end
forkvmm_syscall_probe_start:
    .incbin PROBE_ELF_PATH
forkvmm_syscall_probe_end:
    .section .note.GNU-stack, "", @progbits
