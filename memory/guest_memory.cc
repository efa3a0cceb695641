#include "memory/guest_memory.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include <fmt/core.h>

namespace forkvmm::memory {
namespace {

Result<UniqueFd> OpenBacking(const MemoryOptions& options) {
  switch (options.backing) {
    case Backing::kAnonymous:
      return UniqueFd();
    case Backing::kMemfd: {
      UniqueFd fd(memfd_create("forkvmm-guest-ram", MFD_CLOEXEC));
      if (!fd.valid()) return Error::FromErrno("memfd_create");
      if (ftruncate(fd.get(), static_cast<off_t>(options.ram_bytes)) != 0) {
        return Error::FromErrno("ftruncate", "guest RAM memfd");
      }
      return fd;
    }
    case Backing::kFile: {
      UniqueFd fd(open(options.file_path.c_str(), O_RDONLY | O_CLOEXEC));
      if (!fd.valid()) return Error::FromErrno("open", options.file_path);
      struct stat st {};
      if (fstat(fd.get(), &st) != 0) return Error::FromErrno("fstat", options.file_path);
      if (static_cast<uint64_t>(st.st_size) < options.ram_bytes) {
        return Error(fmt::format("{}: memory file has {} bytes, guest RAM needs {}",
                                 options.file_path, st.st_size, options.ram_bytes));
      }
      return fd;
    }
  }
  return Error("invalid memory backing");
}

}  // namespace

Result<GuestMemory> GuestMemory::Create(const MemoryOptions& options) {
  if (options.ram_bytes < kMinRamBytes || options.ram_bytes > kMaxRamBytes) {
    return Error(fmt::format("guest RAM size {} bytes is outside the supported range {} MiB to {} GiB",
                             options.ram_bytes, kMinRamBytes / kMiB, kMaxRamBytes / kGiB));
  }
  if (options.ram_bytes % (4 * kKiB) != 0) {
    return Error(fmt::format("guest RAM size {} bytes is not a multiple of 4 KiB", options.ram_bytes));
  }
  GuestMemory memory;
  memory.ram_bytes_ = options.ram_bytes;
  memory.backing_ = options.backing;
  ASSIGN_OR_RETURN(memory.backing_fd_, OpenBacking(options));

  // MAP_PRIVATE in every case: fork() must give the child a copy-on-write
  // view, and a file backing must never be written through.
  int flags = MAP_PRIVATE | MAP_NORESERVE;
  if (options.backing == Backing::kAnonymous) flags |= MAP_ANONYMOUS;
  void* address = mmap(nullptr, options.ram_bytes, PROT_READ | PROT_WRITE, flags,
                       memory.backing_fd_.get(), 0);
  if (address == MAP_FAILED) {
    return Error::FromErrno("mmap", fmt::format("{} bytes of guest RAM", options.ram_bytes));
  }
  memory.mapping_ = static_cast<uint8_t*>(address);
  memory.mapping_bytes_ = options.ram_bytes;

  // Advice is best effort: a kernel without THP or KSM still runs the guest.
  if (options.backing == Backing::kAnonymous && options.transparent_hugepages) {
    madvise(address, options.ram_bytes, MADV_HUGEPAGE);
  }
  if (options.mergeable) madvise(address, options.ram_bytes, MADV_MERGEABLE);

  uint64_t offset = 0;
  for (const RamRange& range : RamRangesFor(options.ram_bytes)) {
    memory.regions_.push_back({range.guest_address, range.size, memory.mapping_ + offset, offset});
    offset += range.size;
  }
  return memory;
}

GuestMemory::GuestMemory(GuestMemory&& other) noexcept { *this = std::move(other); }

GuestMemory& GuestMemory::operator=(GuestMemory&& other) noexcept {
  if (this == &other) return *this;
  Unmap();
  mapping_ = std::exchange(other.mapping_, nullptr);
  mapping_bytes_ = std::exchange(other.mapping_bytes_, 0);
  ram_bytes_ = std::exchange(other.ram_bytes_, 0);
  backing_ = other.backing_;
  backing_fd_ = std::move(other.backing_fd_);
  regions_ = std::move(other.regions_);
  return *this;
}

GuestMemory::~GuestMemory() { Unmap(); }

void GuestMemory::Unmap() {
  if (mapping_ != nullptr) munmap(mapping_, mapping_bytes_);
  mapping_ = nullptr;
  regions_.clear();
}

const Region* GuestMemory::FindRegion(uint64_t guest_address, uint64_t length) const {
  for (const Region& region : regions_) {
    // Written so that no sum can overflow: the start must be inside the
    // region and the length must fit in what remains of it.
    if (guest_address < region.guest_address) continue;
    uint64_t offset = guest_address - region.guest_address;
    if (offset > region.size) continue;
    if (length > region.size - offset) continue;
    return &region;
  }
  return nullptr;
}

bool GuestMemory::IsValidRange(uint64_t guest_address, uint64_t length) const {
  return FindRegion(guest_address, length) != nullptr;
}

Result<uint8_t*> GuestMemory::HostAddress(uint64_t guest_address, uint64_t length) const {
  const Region* region = FindRegion(guest_address, length);
  if (region == nullptr) {
    return Error(fmt::format("guest address range {:#x}+{:#x} is outside guest RAM",
                             guest_address, length));
  }
  return region->host + (guest_address - region->guest_address);
}

Status GuestMemory::Read(uint64_t guest_address, void* destination, uint64_t length) const {
  ASSIGN_OR_RETURN(uint8_t* host, HostAddress(guest_address, length));
  if (length > 0) std::memcpy(destination, host, length);
  return Ok();
}

Status GuestMemory::Write(uint64_t guest_address, const void* source, uint64_t length) {
  ASSIGN_OR_RETURN(uint8_t* host, HostAddress(guest_address, length));
  if (length > 0) std::memcpy(host, source, length);
  return Ok();
}

}  // namespace forkvmm::memory
