// Creating qcow2 images and rewriting their backing file reference.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "devices/block/image_file.h"
#include "devices/block/qcow2_format.h"
#include "vmm/base/result.h"

namespace forkvmm::block::qcow2 {

struct CreateOptions {
  uint64_t size = 0;               // virtual disk size in bytes
  uint64_t cluster_size = 65536;   // a power of two from 512 B to 2 MiB
  uint32_t version = 3;            // 2 (qemu "compat=0.10") or 3 ("compat=1.1")
  uint32_t refcount_bits = 16;     // a power of two from 1 to 64; 16 for version 2
  bool lazy_refcounts = false;     // version 3 only
  CompressionType compression_type = CompressionType::kZlib;  // zstd needs version 3
  std::string backing_file;        // recorded as given; empty for none
  std::string backing_format;      // "raw" or "qcow2"; required with a backing file
  ImageFile::CreateMode mode = ImageFile::CreateMode::kTruncate;
};

// Writes a new, empty image: header, refcount table and blocks, and an L1
// table covering `size`. On failure the file is removed again.
Status CreateImage(const std::string& path, const CreateOptions& options);

// Rewrites the header of an open image with a new backing file name and
// format. An empty name removes the backing file, and an empty format
// records none (only tests make such images). Other header extensions
// are kept. The header cluster is written with one pwrite and synced.
Status SetBackingFile(ImageFile& file, const std::string& name, const std::string& format);

}  // namespace forkvmm::block::qcow2
