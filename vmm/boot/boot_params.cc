#include "vmm/boot/boot_params.h"

#include <algorithm>
#include <cstring>

#include <fmt/core.h>

#include "vmm/boot/boot_layout.h"

namespace forkvmm::boot {

std::vector<E820Entry> BuildE820Map(const std::vector<memory::Region>& regions) {
  std::vector<E820Entry> map;
  map.push_back({0, kMpTableAddress, kE820Ram});
  map.push_back({kMpTableAddress, kBaseMemoryEnd - kMpTableAddress, kE820Reserved});
  for (const memory::Region& region : regions) {
    uint64_t start = std::max(region.guest_address, kHighMemoryStart);
    uint64_t end = region.guest_address + region.size;
    if (end > start) map.push_back({start, end - start, kE820Ram});
  }
  return map;
}

Status WriteCommandLine(const std::string& command_line, const LoadedKernel& kernel,
                        memory::GuestMemory& memory) {
  uint64_t limit = std::min<uint64_t>(kernel.header.cmdline_size, kCommandLineMaxBytes - 1);
  if (command_line.size() > limit) {
    return Error(fmt::format("kernel command line is {} bytes; this kernel accepts at most {}",
                             command_line.size(), limit));
  }
  if (command_line.find('\0') != std::string::npos) {
    return Error("kernel command line contains a NUL byte");
  }
  return memory.Write(kCommandLineAddress, command_line.c_str(), command_line.size() + 1);
}

boot_params BuildBootParams(const LoadedKernel& kernel, const std::optional<LoadedInitrd>& initrd,
                            const std::vector<E820Entry>& e820) {
  boot_params params;
  std::memset(&params, 0, sizeof(params));
  params.hdr = kernel.header;
  // 0xff: a boot loader without an assigned id (boot.rst, type_of_loader).
  params.hdr.type_of_loader = 0xff;
  params.hdr.loadflags |= LOADED_HIGH;
  params.hdr.cmd_line_ptr = static_cast<uint32_t>(kCommandLineAddress);
  if (initrd) {
    params.hdr.ramdisk_image = static_cast<uint32_t>(initrd->address);
    params.hdr.ramdisk_size = static_cast<uint32_t>(initrd->size);
  }
  size_t count = std::min<size_t>(e820.size(), E820_MAX_ENTRIES_ZEROPAGE);
  for (size_t i = 0; i < count; ++i) {
    params.e820_table[i].addr = e820[i].address;
    params.e820_table[i].size = e820[i].size;
    params.e820_table[i].type = e820[i].type;
  }
  params.e820_entries = static_cast<uint8_t>(count);
  return params;
}

}  // namespace forkvmm::boot
