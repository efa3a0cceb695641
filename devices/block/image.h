// Opening disk images with their backing chains, creating images, and the
// disk steps of a VM fork.
//
// Backing files: a qcow2 image names its backing file and, in a header
// extension, the backing file's format. A relative name is resolved against
// the directory of the image that names it, as QEMU does.
//
// forkvmm never guesses a backing file's format from its contents. An image
// that names a backing file without a format is rejected, because probing
// would let a guest that writes a qcow2 header into a raw disk make the host
// open any file that header names. Only tools may probe, and only the top
// image given on their command line (ProbeImageFormat). Backing files are
// the only host paths opened because an image names them, and images with
// external data files are rejected.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "devices/block/block_backend.h"
#include "vmm/base/result.h"

namespace forkvmm::block {

// Chains deeper than this are rejected, which also bounds the open file descriptors.
inline constexpr int kMaxBackingChainDepth = 512;

struct OpenOptions {
  bool read_only = false;
  // When false, the image is opened read-only and alone: backing files are
  // not opened and reads of clusters the image does not allocate return
  // zeros. For inspecting a single layer (info, fuzzing).
  bool open_backing = true;
  // Opens the layer directly below the image read-write, for merging the
  // image into it (commit). Deeper layers stay read-only.
  bool writable_backing = false;
  // Lets other processes write and resize the files while they are open, as
  // qemu-img -U does; only with read_only. What is read may then be
  // inconsistent.
  bool force_share = false;
};

// Opens `path` as `format` with its whole backing chain; backing layers are
// always read-only. Errors name the file at fault and the reason.
Result<std::unique_ptr<BlockBackend>> OpenImage(const std::string& path, ImageFormat format,
                                                const OpenOptions& options = {});

// Opens the qcow2 image `overlay_path` read-write on top of `backing`, an
// already open (frozen) layer, without opening the chain again. The overlay
// must name a backing file that resolves to the same file as backing->path().
Result<std::unique_ptr<BlockBackend>> OpenOverlayOn(const std::string& overlay_path,
                                                    std::unique_ptr<BlockBackend> backing);

// Returns kQcow2 when the file starts with the qcow2 magic, else kRaw.
// For command-line tools only; see the note at the top of this file.
Result<ImageFormat> ProbeImageFormat(const std::string& path);

// Resolves a backing file name as written in `image_path`.
std::string ResolveBackingPath(const std::string& image_path, const std::string& backing_name);

struct CreateImageOptions {
  ImageFormat format = ImageFormat::kQcow2;
  // Virtual size in bytes; with a backing file, defaults to its size.
  std::optional<uint64_t> size;
  uint64_t cluster_size = 65536;
  uint32_t qcow2_version = 3;
  uint32_t refcount_bits = 16;
  bool lazy_refcounts = false;
  bool zstd = false;
  // Backing file as it will be recorded (relative names are relative to the
  // new image's directory); qcow2 only. The file must open as
  // `backing_format`.
  std::string backing_file;
  std::optional<ImageFormat> backing_format;
  // Fail when `path` exists (fork overlays) instead of replacing it.
  bool exclusive = false;
};

Status CreateImage(const std::string& path, const CreateImageOptions& options);

// Creates a qcow2 v3 overlay at `overlay_path` whose backing file is
// `backing_path` (recorded as given, so a relative path stays relative to
// the overlay's directory) with format `backing_format`. The overlay has the
// backing layer's size. Fails if `overlay_path` exists.
Status CreateOverlay(const std::string& overlay_path, const std::string& backing_path,
                     ImageFormat backing_format, uint64_t cluster_size = 65536);

// The disk half of a VM fork, run in the parent before fork():
//   1. drains and flushes `top` and reopens it read-only (it is frozen from
//      now on: nothing may write a layer that has children);
//   2. creates `parent_overlay` and `child_overlay` on it (qcow2 v3, backing
//      path relative when top->path() is relative).
// The overlays are created before `top` is frozen, so on failure `top`
// stays writable and no overlay remains. After fork(), each process calls
// OpenOverlayOn(its overlay, frozen top); the child first calls
// top->AbandonAsyncAfterFork().
Status FreezeAndBranch(BlockBackend& top, const std::string& parent_overlay,
                       const std::string& child_overlay);

}  // namespace forkvmm::block
