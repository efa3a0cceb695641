// Compressed qcow2 clusters: zlib raw deflate (compression_type 0) and zstd
// (compression_type 1).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "devices/block/qcow2_format.h"
#include "vmm/base/result.h"

namespace forkvmm::block::qcow2 {

// Decompresses `in` until `out` (one cluster) is full. Bytes after the end of
// the compressed stream are ignored, as the format allows. Fails when the
// data is invalid or ends before the cluster is complete.
Status DecompressCluster(CompressionType type, std::span<const uint8_t> in,
                         std::span<uint8_t> out);

// Compresses one cluster; returns the compressed bytes. Used by tests and
// benchmarks to build compressed images without QEMU.
Result<std::vector<uint8_t>> CompressCluster(CompressionType type, std::span<const uint8_t> in);

}  // namespace forkvmm::block::qcow2
