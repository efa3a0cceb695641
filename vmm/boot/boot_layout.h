// Where the boot code puts its structures in low guest RAM.
//
// Everything below 1 MiB except the MP table area is ordinary RAM in the
// guest's e820 map; the guest kernel is free to reuse it after boot.
#pragma once

#include <cstdint>

namespace forkvmm::boot {

inline constexpr uint64_t kGdtAddress = 0x500;
inline constexpr uint64_t kIdtAddress = 0x520;
// The boot stack grows down from here.
inline constexpr uint64_t kBootStackTop = 0x8ff0;
// The zero page: struct boot_params (Linux boot protocol, 64-bit entry).
inline constexpr uint64_t kBootParamsAddress = 0x7000;
inline constexpr uint64_t kPml4Address = 0x9000;
inline constexpr uint64_t kPdptAddress = 0xa000;
// Four page directories, one per GiB of the identity map.
inline constexpr uint64_t kPageDirectoryAddress = 0xb000;
inline constexpr uint64_t kCommandLineAddress = 0x20000;
// Room for the command line, up to the start of the EBDA-style area.
inline constexpr uint64_t kCommandLineMaxBytes = 0x10000;
// The MP configuration table, and the MP floating pointer in the last KiB of
// base memory, where Linux looks for it. The 8 KiB from kMpTableAddress to
// kBaseMemoryEnd are reserved in the e820 map.
inline constexpr uint64_t kMpTableAddress = 0x9e000;
inline constexpr uint64_t kMpFloatingPointerAddress = 0x9fc00;
inline constexpr uint64_t kBaseMemoryEnd = 0xa0000;
// Start of the kernel's protected-mode code (the "high memory" of the boot
// protocol).
inline constexpr uint64_t kHighMemoryStart = 0x100000;
// The two pages KVM needs for the TSS and identity-map of real-mode guests
// on Intel hosts, placed just below the IOAPIC in the MMIO hole.
inline constexpr uint64_t kKvmTssAddress = 0xfeffd000;
inline constexpr uint64_t kKvmIdentityMapAddress = 0xfeffc000;

}  // namespace forkvmm::boot
