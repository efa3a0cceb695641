// Whole-image operations that keep backing chains short: commit (merge a
// layer into its backing layer) and rebase (change or drop a backing file).
//
// Both are synchronous and meant for tools and for a VM that is not running
// from the images involved. Committing into a layer that other overlays use
// as their backing changes what those overlays read; the caller must know
// that no other overlay depends on it.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>

#include "devices/block/block_backend.h"
#include "vmm/base/result.h"

namespace forkvmm::block {

// Receives progress as (bytes done, bytes total).
using ProgressCallback = std::function<void(uint64_t done, uint64_t total)>;

struct CommitOptions {
  // Make the committed clusters of the top image unallocated afterwards, so
  // the top image stays small (what `qemu-img commit` does unless -d).
  bool empty_top = true;
  ProgressCallback progress;
};

// Copies everything the qcow2 image at `path` stores itself (data and zero
// clusters) into its backing layer, then flushes the backing layer. A raw
// backing layer shorter than the image is grown first. The image's contents
// as seen through the chain do not change at any point.
Status Commit(const std::string& path, const CommitOptions& options = {});

struct RebaseOptions {
  // The new backing file as it will be recorded (relative names are
  // relative to the image's directory); empty makes the image standalone.
  std::string backing_file;
  std::optional<ImageFormat> backing_format;
  // Only rewrite the header; the caller promises the new backing layer has
  // the same contents as the old one.
  bool unsafe = false;
  ProgressCallback progress;
};

// Changes the backing file of the qcow2 image at `path`. Unless `unsafe`,
// every range the image does not store itself and where the old and the new
// backing chains differ is first copied into the image, so its contents do
// not change; with an empty backing_file this flattens the chain into a
// standalone image.
Status Rebase(const std::string& path, const RebaseOptions& options);

}  // namespace forkvmm::block
