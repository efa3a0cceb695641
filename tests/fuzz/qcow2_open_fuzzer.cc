// libFuzzer target for the qcow2 open path: header and extension parsing,
// table validation, reads through L1/L2 (including compressed clusters),
// the metadata checker, and an allocating write on a writable open.
//
// The input becomes a memfd opened by its /proc/self/fd path. Backing files
// are never opened, so no input can make the fuzzer touch a host path.
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <string>
#include <vector>

#include "devices/block/image.h"
#include "devices/block/qcow2.h"
#include "devices/block/qcow2_check.h"
#include "vmm/base/log.h"

namespace {

using forkvmm::block::BlockBackend;
using forkvmm::block::ImageFile;
using forkvmm::block::ImageFormat;

bool WriteAll(int fd, const uint8_t* data, size_t size) {
  while (size > 0) {
    ssize_t n = ::write(fd, data, size);
    if (n <= 0) return false;
    data += n;
    size -= static_cast<size_t>(n);
  }
  return true;
}

// Reads the first and last sectors, one in the middle, and walks a few extents.
void ReadSome(BlockBackend& disk) {
  std::vector<uint8_t> buffer(4096);
  const uint64_t size = disk.size();
  for (uint64_t offset : {uint64_t{0}, size / 2, size > 512 ? size - 512 : 0}) {
    uint64_t n = std::min<uint64_t>(buffer.size(), size - std::min(size, offset));
    if (n > 0) (void)disk.Read(offset, std::span(buffer.data(), n));
  }
  uint64_t offset = 0;
  for (int i = 0; i < 16 && offset < size; ++i) {
    auto extent = disk.GetExtent(offset, size - offset);
    if (!extent.ok()) break;
    offset += extent->length;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static bool quiet = [] {
    forkvmm::SetLogLevel(forkvmm::LogLevel::kError);
    return true;
  }();
  (void)quiet;
  int fd = ::memfd_create("fuzz.qcow2", MFD_CLOEXEC);
  if (fd < 0 || !WriteAll(fd, data, size)) {
    if (fd >= 0) ::close(fd);
    return 0;
  }
  const std::string path = "/proc/self/fd/" + std::to_string(fd);

  auto read_only = forkvmm::block::OpenImage(path, ImageFormat::kQcow2,
                                             {.read_only = true, .open_backing = false});
  if (read_only.ok()) ReadSome(**read_only);
  read_only = forkvmm::Error("closed");

  (void)forkvmm::block::qcow2::CheckImage(path, forkvmm::block::qcow2::RepairMode::kNone);

  // A writable open without the backing chain: allocate, copy on write, flush.
  auto file = ImageFile::Open(path, /*writable=*/true);
  if (file.ok()) {
    auto writable = forkvmm::block::Qcow2Backend::Open(std::move(file).value());
    if (writable.ok() && (*writable)->size() >= 4096) {
      std::vector<uint8_t> pattern(1536, 0x5a);
      (void)(*writable)->Write(1000, pattern);
      (void)(*writable)->WriteZeroes(0, 512);
      (void)(*writable)->Flush();
      ReadSome(**writable);
    }
  }
  ::close(fd);
  return 0;
}
