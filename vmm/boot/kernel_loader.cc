#include "vmm/boot/kernel_loader.h"

#include <elf.h>

#include <algorithm>
#include <cstring>

#include <fmt/core.h>

#include "vmm/base/file.h"
#include "vmm/boot/boot_layout.h"

namespace forkvmm::boot {
namespace {

constexpr uint32_t kSetupHeaderMagic = 0x53726448;  // "HdrS"
constexpr uint64_t kSetupHeaderOffset = 0x1f1;
// The 64-bit entry point lies 0x200 bytes into the protected-mode code.
constexpr uint64_t kBzImage64BitEntryOffset = 0x200;
constexpr uint16_t kMinBootProtocol = 0x020c;  // 2.12: xloadflags, 64-bit entry
constexpr uint64_t kDefaultInitrdAddressMax = 0x37ffffff;
constexpr uint64_t kPageSize = 4096;

Status CopyToGuest(const ReadOnlyFile& file, uint64_t file_offset, uint64_t length,
                   uint64_t guest_address, memory::GuestMemory& memory) {
  ASSIGN_OR_RETURN(uint8_t * host, memory.HostAddress(guest_address, length));
  return file.ReadAt(file_offset, host, length);
}

Status CheckGuestRange(const std::string& path, const char* what, uint64_t address,
                       uint64_t length, const memory::GuestMemory& memory) {
  if (address < kBaseMemoryEnd) {
    return Error(fmt::format("{}: {} at {:#x} overlaps the boot structures below {:#x}", path,
                             what, address, kBaseMemoryEnd));
  }
  if (!memory.IsValidRange(address, length)) {
    return Error(fmt::format("{}: {} at {:#x}+{:#x} does not fit in guest RAM ({} MiB)", path,
                             what, address, length, memory.ram_bytes() >> 20));
  }
  return Ok();
}

setup_header HeaderForElf(uint64_t kernel_end) {
  setup_header header{};
  header.boot_flag = 0xaa55;
  header.header = kSetupHeaderMagic;
  header.version = kMinBootProtocol;
  header.kernel_alignment = 0x1000000;
  header.initrd_addr_max = static_cast<uint32_t>(kDefaultInitrdAddressMax);
  header.cmdline_size = static_cast<uint32_t>(kCommandLineMaxBytes - 1);
  header.xloadflags = XLF_KERNEL_64;
  header.init_size = static_cast<uint32_t>(kernel_end);
  return header;
}

Result<LoadedKernel> LoadElf(const ReadOnlyFile& file, memory::GuestMemory& memory) {
  const std::string& path = file.path();
  Elf64_Ehdr ehdr;
  TRY(file.ReadAt(0, &ehdr, sizeof(ehdr)));
  if (ehdr.e_ident[EI_CLASS] != ELFCLASS64 || ehdr.e_ident[EI_DATA] != ELFDATA2LSB ||
      ehdr.e_machine != EM_X86_64) {
    return Error(fmt::format("{}: ELF file is not a 64-bit x86 executable", path));
  }
  if (ehdr.e_type != ET_EXEC) return Error(fmt::format("{}: ELF file is not an executable", path));
  if (ehdr.e_phentsize != sizeof(Elf64_Phdr) || ehdr.e_phnum == 0 || ehdr.e_phnum > 64) {
    return Error(fmt::format("{}: ELF file has an invalid program header table", path));
  }

  LoadedKernel kernel;
  kernel.format = KernelFormat::kElf;
  bool entry_loaded = false;
  uint64_t lowest = UINT64_MAX;
  for (uint16_t i = 0; i < ehdr.e_phnum; ++i) {
    Elf64_Phdr phdr;
    TRY(file.ReadAt(ehdr.e_phoff + uint64_t{i} * sizeof(Elf64_Phdr), &phdr, sizeof(phdr)));
    if (phdr.p_type != PT_LOAD || phdr.p_memsz == 0) continue;
    if (phdr.p_filesz > phdr.p_memsz) {
      return Error(fmt::format("{}: ELF segment {} has a file size larger than its memory size",
                               path, i));
    }
    TRY(CheckGuestRange(path, "ELF segment", phdr.p_paddr, phdr.p_memsz, memory));
    TRY(CopyToGuest(file, phdr.p_offset, phdr.p_filesz, phdr.p_paddr, memory));
    ASSIGN_OR_RETURN(uint8_t * bss, memory.HostAddress(phdr.p_paddr + phdr.p_filesz,
                                                       phdr.p_memsz - phdr.p_filesz));
    std::memset(bss, 0, phdr.p_memsz - phdr.p_filesz);
    kernel.end = std::max(kernel.end, phdr.p_paddr + phdr.p_memsz);
    lowest = std::min(lowest, phdr.p_paddr);
    if (ehdr.e_entry >= phdr.p_paddr && ehdr.e_entry - phdr.p_paddr < phdr.p_filesz) {
      entry_loaded = true;
    }
  }
  if (kernel.end == 0) return Error(fmt::format("{}: ELF file has no loadable segment", path));
  if (!entry_loaded) {
    return Error(fmt::format("{}: ELF entry point {:#x} is not inside a loaded segment", path,
                             ehdr.e_entry));
  }
  kernel.entry = ehdr.e_entry;
  kernel.header = HeaderForElf(kernel.end - lowest);
  return kernel;
}

Result<LoadedKernel> LoadBzImage(const ReadOnlyFile& file, memory::GuestMemory& memory) {
  const std::string& path = file.path();
  setup_header header;
  TRY(file.ReadAt(kSetupHeaderOffset, &header, sizeof(header)));
  if (header.version < kMinBootProtocol || !(header.xloadflags & XLF_KERNEL_64)) {
    return Error(fmt::format("{}: bzImage uses boot protocol {}.{:02} without a 64-bit entry "
                             "point; protocol 2.12 or later with a 64-bit kernel is required",
                             path, header.version >> 8, header.version & 0xff));
  }
  uint64_t setup_sectors = header.setup_sects == 0 ? 4 : header.setup_sects;
  uint64_t setup_bytes = (setup_sectors + 1) * 512;
  if (setup_bytes >= file.size()) {
    return Error(fmt::format("{}: bzImage is truncated: no protected-mode code after the {} "
                             "setup bytes",
                             path, setup_bytes));
  }
  uint64_t code_bytes = file.size() - setup_bytes;
  uint64_t load_address = header.pref_address >= kHighMemoryStart ? header.pref_address
                                                                   : kHighMemoryStart;
  uint64_t needed = std::max<uint64_t>(code_bytes, header.init_size);
  TRY(CheckGuestRange(path, "kernel", load_address, needed, memory));
  TRY(CopyToGuest(file, setup_bytes, code_bytes, load_address, memory));

  LoadedKernel kernel;
  kernel.format = KernelFormat::kBzImage;
  kernel.entry = load_address + kBzImage64BitEntryOffset;
  kernel.end = load_address + needed;
  kernel.header = header;
  kernel.header.code32_start = static_cast<uint32_t>(load_address);
  return kernel;
}

}  // namespace

Result<LoadedKernel> LoadKernel(const std::string& path, memory::GuestMemory& memory) {
  ASSIGN_OR_RETURN(ReadOnlyFile file, ReadOnlyFile::Open(path));
  uint8_t ident[4] = {};
  if (file.size() >= sizeof(ident)) TRY(file.ReadAt(0, ident, sizeof(ident)));
  if (std::memcmp(ident, ELFMAG, SELFMAG) == 0) return LoadElf(file, memory);

  uint32_t magic = 0;
  if (file.size() >= 0x202 + sizeof(magic)) TRY(file.ReadAt(0x202, &magic, sizeof(magic)));
  if (magic == kSetupHeaderMagic) return LoadBzImage(file, memory);
  return Error(fmt::format("{}: not a Linux kernel: neither an ELF file nor a bzImage", path));
}

Result<LoadedInitrd> LoadInitrd(const std::string& path, const LoadedKernel& kernel,
                                memory::GuestMemory& memory) {
  ASSIGN_OR_RETURN(ReadOnlyFile file, ReadOnlyFile::Open(path));
  if (file.size() == 0) return Error(fmt::format("{}: initrd is empty", path));
  const memory::Region& low = memory.regions().front();
  uint64_t limit = std::min<uint64_t>(low.guest_address + low.size,
                                      uint64_t{kernel.header.initrd_addr_max} + 1);
  uint64_t floor = (kernel.end + kPageSize - 1) & ~(kPageSize - 1);
  if (file.size() > limit || (limit - file.size()) < floor) {
    return Error(fmt::format("{}: initrd of {} bytes does not fit in guest RAM: {} bytes are "
                             "free between the kernel and {:#x}; give the guest more memory",
                             path, file.size(), limit > floor ? limit - floor : 0, limit));
  }
  uint64_t address = (limit - file.size()) & ~(kPageSize - 1);
  TRY(CopyToGuest(file, 0, file.size(), address, memory));
  return LoadedInitrd{address, file.size()};
}

}  // namespace forkvmm::boot
