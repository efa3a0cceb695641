#include "devices/block/image_ops.h"

#include <fmt/core.h>
#include <sys/stat.h>

#include <algorithm>
#include <vector>

#include "devices/block/image.h"
#include "devices/block/qcow2.h"
#include "devices/block/qcow2_create.h"

namespace forkvmm::block {
namespace {

// Bytes read per step.
constexpr uint64_t kChunk = 1 << 20;

void Report(const ProgressCallback& progress, uint64_t done, uint64_t total) {
  if (progress) progress(done, total);
}

// Calls `visit(offset, extent)` for each extent of `layer`, in order.
Status ForEachExtent(BlockBackend& layer, const ProgressCallback& progress,
                     const std::function<Status(uint64_t, const Extent&)>& visit) {
  const uint64_t size = layer.size();
  for (uint64_t offset = 0; offset < size;) {
    ASSIGN_OR_RETURN(Extent extent, layer.GetExtent(offset, std::min(kChunk, size - offset)));
    TRY(visit(offset, extent));
    offset += extent.length;
    Report(progress, offset, size);
  }
  return Ok();
}

// True when `a` and `b` (same device and inode) are one file.
bool SameFile(const std::string& a, const std::string& b) {
  struct stat sa {};
  struct stat sb {};
  return ::stat(a.c_str(), &sa) == 0 && ::stat(b.c_str(), &sb) == 0 && sa.st_dev == sb.st_dev &&
         sa.st_ino == sb.st_ino;
}

}  // namespace

Status Commit(const std::string& path, const CommitOptions& options) {
  ASSIGN_OR_RETURN(std::unique_ptr<BlockBackend> top,
                   OpenImage(path, ImageFormat::kQcow2, {.writable_backing = true}));
  BlockBackend* base = top->backing();
  if (base == nullptr) return Error(fmt::format("{}: the image has no backing file", path));
  if (base->size() < top->size()) {
    // A shorter base would lose the data past its end.
    Status grown = base->GrowTo(top->size());
    if (!grown.ok()) {
      return std::move(grown).error().WithContext(
          fmt::format("{}: the backing file is shorter than the image", path));
    }
  }

  std::vector<uint8_t> buffer;
  Status copied = ForEachExtent(*top, options.progress, [&](uint64_t offset, const Extent& extent) -> Status {
    switch (extent.kind) {
      case ExtentKind::kUnallocated:
        return Ok();
      case ExtentKind::kZero:
        return base->WriteZeroes(offset, extent.length);
      case ExtentKind::kData:
        buffer.resize(extent.length);
        TRY(top->Read(offset, buffer));
        return base->Write(offset, buffer);
    }
    return Ok();
  });
  TRY(copied);
  // The base must hold the data durably before the top gives it up.
  TRY(base->Flush());
  if (options.empty_top) {
    Status emptied = ForEachExtent(*top, {}, [&](uint64_t offset, const Extent& extent) {
      return extent.kind == ExtentKind::kUnallocated ? Ok() : top->Unallocate(offset, extent.length);
    });
    TRY(emptied);
    TRY(top->Flush());
  }
  return Ok();
}

Status Rebase(const std::string& path, const RebaseOptions& options) {
  if (!options.backing_file.empty() && !options.backing_format) {
    return Error(fmt::format("{}: a backing file needs its format (raw or qcow2); forkvmm records "
                             "it and never guesses it",
                             path));
  }
  std::unique_ptr<BlockBackend> new_chain;
  if (!options.backing_file.empty() && !options.unsafe) {
    std::string resolved = ResolveBackingPath(path, options.backing_file);
    ASSIGN_OR_RETURN(new_chain, OpenImage(resolved, *options.backing_format, {.read_only = true}));
    for (BlockBackend* layer = new_chain.get(); layer != nullptr; layer = layer->backing()) {
      if (SameFile(layer->path(), path)) {
        return Error(fmt::format("{}: the new backing chain contains the image itself", path));
      }
    }
  }

  if (!options.unsafe) {
    ASSIGN_OR_RETURN(std::unique_ptr<BlockBackend> top, OpenImage(path, ImageFormat::kQcow2));
    std::vector<uint8_t> old_view;
    std::vector<uint8_t> new_view;
    Status copied = ForEachExtent(*top, options.progress, [&](uint64_t offset, const Extent& extent) -> Status {
      if (extent.kind != ExtentKind::kUnallocated) return Ok();
      old_view.resize(extent.length);
      new_view.assign(extent.length, 0);
      TRY(top->Read(offset, old_view));  // through the old backing chain
      if (new_chain && offset < new_chain->size()) {
        uint64_t n = std::min<uint64_t>(extent.length, new_chain->size() - offset);
        TRY(new_chain->Read(offset, std::span(new_view).first(n)));
      }
      // Copy only the clusters that differ, so the image stays sparse.
      const uint64_t step = static_cast<Qcow2Backend&>(*top).cluster_size();
      for (uint64_t pos = 0; pos < extent.length; pos += step) {
        uint64_t n = std::min(step, extent.length - pos);
        if (!std::equal(old_view.begin() + pos, old_view.begin() + pos + n, new_view.begin() + pos)) {
          TRY(top->Write(offset + pos, std::span(old_view).subspan(pos, n)));
        }
      }
      return Ok();
    });
    TRY(copied);
    TRY(top->Flush());
  }
  // Only now, with the data in place, point the image at its new backing file.
  ASSIGN_OR_RETURN(ImageFile file, ImageFile::Open(path, /*writable=*/true));
  std::string format = options.backing_format ? std::string(FormatName(*options.backing_format)) : "";
  return qcow2::SetBackingFile(file, options.backing_file, format);
}

}  // namespace forkvmm::block
