#include "devices/block/qcow2_create.h"

#include <fmt/core.h>
#include <unistd.h>

#include <bit>
#include <cstring>
#include <vector>

#include "devices/block/qcow2_refcount.h"

namespace forkvmm::block::qcow2 {
namespace {

Status ValidateOptions(const CreateOptions& o) {
  if (!std::has_single_bit(o.cluster_size) || o.cluster_size < (1u << kMinClusterBits) ||
      o.cluster_size > (1u << kMaxClusterBits)) {
    return Error(fmt::format("invalid cluster size {} (must be a power of two from 512 B to "
                             "2 MiB)",
                             o.cluster_size));
  }
  if (o.version != 2 && o.version != 3) {
    return Error(fmt::format("unsupported qcow2 version {} (supported: 2, 3)", o.version));
  }
  if (!std::has_single_bit(o.refcount_bits) || o.refcount_bits > 64) {
    return Error(fmt::format("invalid refcount width {} (must be 1, 2, 4, 8, 16, 32 or 64 bits)",
                             o.refcount_bits));
  }
  if (o.version == 2 && o.refcount_bits != 16) {
    return Error("version 2 images have 16-bit refcounts; use version 3 for other widths");
  }
  if (o.version == 2 && (o.lazy_refcounts || o.compression_type != CompressionType::kZlib)) {
    return Error("lazy refcounts and zstd compression need a version 3 image");
  }
  if (!o.backing_file.empty() && o.backing_format.empty()) {
    return Error("a backing file needs a backing format (raw or qcow2)");
  }
  uint64_t bytes_per_l1_entry = o.cluster_size * (o.cluster_size / 8);
  if (DivRoundUp(o.size, bytes_per_l1_entry) * 8 > kMaxL1TableBytes) {
    return Error(fmt::format("virtual size {} is too large for {}-byte clusters (the L1 table "
                             "would exceed {} MiB)",
                             o.size, o.cluster_size, kMaxL1TableBytes >> 20));
  }
  return Ok();
}

Header MakeHeader(const CreateOptions& o) {
  Header h;
  h.version = o.version;
  h.cluster_bits = static_cast<uint32_t>(std::countr_zero(o.cluster_size));
  h.size = o.size;
  h.refcount_order = static_cast<uint32_t>(std::countr_zero(o.refcount_bits));
  h.compression_type = o.compression_type;
  if (o.compression_type != CompressionType::kZlib) h.incompatible_features |= kIncompatCompression;
  if (o.lazy_refcounts) h.compatible_features |= kCompatLazyRefcounts;
  h.header_length = o.version == 2 ? kV2HeaderLength : kV3HeaderLength;
  h.backing_file = o.backing_file;
  if (!o.backing_file.empty()) h.backing_format = o.backing_format;
  return h;
}

Status WriteNewImage(ImageFile& file, const CreateOptions& o) {
  Header h = MakeHeader(o);
  const uint64_t cs = o.cluster_size;
  const uint64_t per_block = (cs * 8) >> h.refcount_order;
  const uint64_t l1_entries = DivRoundUp(o.size, cs * (cs / 8));
  const uint64_t l1_clusters = std::max<uint64_t>(1, DivRoundUp(l1_entries * 8, cs));
  // Layout: header, refcount table, refcount blocks, L1 table. Find how many
  // blocks and table clusters cover all of them.
  uint64_t table_clusters = 1;
  uint64_t blocks = 1;
  for (;;) {
    uint64_t total = 1 + table_clusters + blocks + l1_clusters;
    uint64_t need_blocks = DivRoundUp(total, per_block);
    uint64_t need_table = DivRoundUp(need_blocks * 8, cs);
    if (need_blocks == blocks && need_table == table_clusters) break;
    blocks = need_blocks;
    table_clusters = need_table;
  }
  const uint64_t total = 1 + table_clusters + blocks + l1_clusters;
  h.refcount_table_offset = cs;
  h.refcount_table_clusters = static_cast<uint32_t>(table_clusters);
  h.l1_table_offset = (1 + table_clusters + blocks) * cs;
  h.l1_size = static_cast<uint32_t>(l1_entries);

  if (h.version >= 3) h.feature_names = StandardFeatureNames();
  Result<std::vector<uint8_t>> encoded = SerializeHeader(h);
  if (!encoded.ok() && h.version >= 3) {
    h.feature_names.clear();  // optional; leave it out of small header clusters
    encoded = SerializeHeader(h);
  }
  if (!encoded.ok()) return std::move(encoded).error();

  std::vector<uint8_t> table(table_clusters * cs, 0);
  std::vector<uint8_t> block(cs);
  for (uint64_t b = 0; b < blocks; ++b) {
    std::fill(block.begin(), block.end(), uint8_t{0});
    for (uint64_t c = b * per_block; c < std::min(total, (b + 1) * per_block); ++c) {
      SetRefcountEntry(block.data(), c - b * per_block, h.refcount_order, 1);
    }
    uint64_t offset = (1 + table_clusters + b) * cs;
    TRY(file.WriteAll(offset, block));
    StoreBe64(table.data() + b * 8, offset);
  }
  TRY(file.WriteAll(cs, table));
  TRY(file.Truncate(total * cs));  // the L1 table reads as zeros
  TRY(file.WriteAll(0, *encoded));
  return file.DataSync();
}

}  // namespace

Status CreateImage(const std::string& path, const CreateOptions& options) {
  Status valid = ValidateOptions(options);
  if (!valid.ok()) return std::move(valid).error().WithContext(path);
  ASSIGN_OR_RETURN(ImageFile file, ImageFile::Create(path, options.mode));
  Status written = WriteNewImage(file, options);
  if (!written.ok()) {
    ::unlink(path.c_str());
    Error error = std::move(written).error();
    if (error.message().rfind(path, 0) == 0) return error;
    return std::move(error).WithContext(path);
  }
  return Ok();
}

Status SetBackingFile(ImageFile& file, const std::string& name, const std::string& format) {
  ASSIGN_OR_RETURN(uint64_t file_size, file.Size());
  std::vector<uint8_t> head(std::min<uint64_t>(file_size, kMaxHeaderRead));
  TRY(file.ReadExact(0, head));
  Result<Header> parsed = ParseHeader(head, file_size);
  if (!parsed.ok()) return std::move(parsed).error().WithContext(file.path());
  Header h = std::move(parsed).value();
  h.backing_file = name;
  if (name.empty() || format.empty()) {
    h.backing_format.reset();
  } else {
    h.backing_format = format;
  }
  Result<std::vector<uint8_t>> encoded = SerializeHeader(h);
  if (!encoded.ok()) return std::move(encoded).error().WithContext(file.path());
  // Keep additional header fields this code does not know (after
  // compression_type, up to header_length).
  constexpr size_t kKnownEnd = 105;
  if (h.version >= 3 && h.header_length > kKnownEnd) {
    std::memcpy(encoded->data() + kKnownEnd, head.data() + kKnownEnd, h.header_length - kKnownEnd);
  }
  TRY(file.WriteAll(0, *encoded));
  return file.DataSync();
}

}  // namespace forkvmm::block::qcow2
