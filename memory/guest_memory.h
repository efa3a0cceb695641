// Guest RAM: its host mapping and bounds-checked guest-physical access.
//
// Guest RAM is always mapped MAP_PRIVATE so that fork() shares it
// copy-on-write between a VM process and its fork children. Every access a
// device makes on behalf of the guest goes through the checked accessors
// here; a guest-physical range is valid only if it lies entirely inside one
// RAM range.
//
// Thread safety: the layout is immutable after Create(). Reads and writes of
// guest RAM race with the running guest by nature; callers that need a
// consistent view pause the vCPUs first.
#pragma once

#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "memory/layout.h"
#include "vmm/base/result.h"
#include "vmm/base/unique_fd.h"

namespace forkvmm::memory {

enum class Backing {
  // Anonymous private memory. With transparent huge pages this is the
  // fastest to fork (page-table copying dominates fork()).
  kAnonymous,
  // A private mapping of a new memfd. Its unwritten pages stay shared page
  // cache between processes that map the same memfd.
  kMemfd,
  // A private mapping of an existing file, such as a snapshot's memory file:
  // pages load lazily and writes never reach the file.
  kFile,
};

struct MemoryOptions {
  uint64_t ram_bytes = 0;
  Backing backing = Backing::kAnonymous;
  // Ask for transparent huge pages (madvise MADV_HUGEPAGE); anonymous only.
  bool transparent_hugepages = true;
  // Offer the pages to KSM (madvise MADV_MERGEABLE).
  bool mergeable = false;
  // For Backing::kFile: the file to map. It must hold at least ram_bytes.
  std::string file_path;
};

// A slice of the host mapping that backs one guest RAM range.
struct Region {
  uint64_t guest_address = 0;
  uint64_t size = 0;
  uint8_t* host = nullptr;
  // Offset of this region in the backing memfd or file.
  uint64_t backing_offset = 0;
};

class GuestMemory {
 public:
  static Result<GuestMemory> Create(const MemoryOptions& options);

  GuestMemory(GuestMemory&& other) noexcept;
  GuestMemory& operator=(GuestMemory&& other) noexcept;
  GuestMemory(const GuestMemory&) = delete;
  GuestMemory& operator=(const GuestMemory&) = delete;
  ~GuestMemory();

  uint64_t ram_bytes() const { return ram_bytes_; }
  const std::vector<Region>& regions() const { return regions_; }
  Backing backing() const { return backing_; }
  // The fd of a memfd or file backing; -1 for anonymous memory.
  int backing_fd() const { return backing_fd_.get(); }

  // Returns true if [guest_address, guest_address + length) lies inside one
  // RAM range. A zero length is valid at any address inside RAM and at the
  // end of a range.
  bool IsValidRange(uint64_t guest_address, uint64_t length) const;

  // Returns the host address of [guest_address, guest_address + length), or
  // an error if the range is not entirely inside one RAM range. The pointer
  // stays valid for the life of this object.
  Result<uint8_t*> HostAddress(uint64_t guest_address, uint64_t length) const;

  Status Read(uint64_t guest_address, void* destination, uint64_t length) const;
  Status Write(uint64_t guest_address, const void* source, uint64_t length);

  template <typename T>
  Result<T> ReadObject(uint64_t guest_address) const {
    static_assert(std::is_trivially_copyable_v<T>);
    T value;
    TRY(Read(guest_address, &value, sizeof(T)));
    return value;
  }

  template <typename T>
  Status WriteObject(uint64_t guest_address, const T& value) {
    static_assert(std::is_trivially_copyable_v<T>);
    return Write(guest_address, &value, sizeof(T));
  }

 private:
  GuestMemory() = default;
  const Region* FindRegion(uint64_t guest_address, uint64_t length) const;
  void Unmap();

  uint8_t* mapping_ = nullptr;
  uint64_t mapping_bytes_ = 0;
  uint64_t ram_bytes_ = 0;
  Backing backing_ = Backing::kAnonymous;
  UniqueFd backing_fd_;
  std::vector<Region> regions_;
};

}  // namespace forkvmm::memory
