#include "devices/block/qcow2_format.h"

#include <fmt/core.h>

#include <algorithm>
#include <cstring>
#include <set>

namespace forkvmm::block::qcow2 {

uint16_t LoadBe16(const uint8_t* p) { return static_cast<uint16_t>(p[0] << 8 | p[1]); }
uint32_t LoadBe32(const uint8_t* p) {
  return uint32_t{p[0]} << 24 | uint32_t{p[1]} << 16 | uint32_t{p[2]} << 8 | uint32_t{p[3]};
}
uint64_t LoadBe64(const uint8_t* p) { return uint64_t{LoadBe32(p)} << 32 | LoadBe32(p + 4); }
void StoreBe16(uint8_t* p, uint16_t v) {
  p[0] = static_cast<uint8_t>(v >> 8);
  p[1] = static_cast<uint8_t>(v);
}
void StoreBe32(uint8_t* p, uint32_t v) {
  StoreBe16(p, static_cast<uint16_t>(v >> 16));
  StoreBe16(p + 2, static_cast<uint16_t>(v));
}
void StoreBe64(uint8_t* p, uint64_t v) {
  StoreBe32(p, static_cast<uint32_t>(v >> 32));
  StoreBe32(p + 4, static_cast<uint32_t>(v));
}

namespace {

constexpr size_t kFeatureNameEntrySize = 48;
constexpr size_t kFeatureNameLength = 46;

uint64_t RoundUp8(uint64_t value) { return (value + 7) & ~uint64_t{7}; }

void ParseFixedFields(std::span<const uint8_t> head, Header& h) {
  const uint8_t* p = head.data();
  h.version = LoadBe32(p + 4);
  h.backing_file_offset = LoadBe64(p + 8);
  h.backing_file_size = LoadBe32(p + 16);
  h.cluster_bits = LoadBe32(p + 20);
  h.size = LoadBe64(p + 24);
  h.crypt_method = LoadBe32(p + 32);
  h.l1_size = LoadBe32(p + 36);
  h.l1_table_offset = LoadBe64(p + 40);
  h.refcount_table_offset = LoadBe64(p + 48);
  h.refcount_table_clusters = LoadBe32(p + 56);
  h.nb_snapshots = LoadBe32(p + 60);
  h.snapshots_offset = LoadBe64(p + 64);
}

Status ParseVersion3Fields(std::span<const uint8_t> head, uint64_t file_size, Header& h) {
  if (head.size() < kV3MinHeaderLength) {
    return Error(fmt::format("truncated: a version 3 header needs {} bytes, the file has {}",
                             kV3MinHeaderLength, file_size));
  }
  const uint8_t* p = head.data();
  h.incompatible_features = LoadBe64(p + 72);
  h.compatible_features = LoadBe64(p + 80);
  h.autoclear_features = LoadBe64(p + 88);
  h.refcount_order = LoadBe32(p + 96);
  h.header_length = LoadBe32(p + 100);
  if (h.header_length < kV3MinHeaderLength || h.header_length % 8 != 0 ||
      h.header_length > h.cluster_size()) {
    return Error(fmt::format("invalid header length {} (must be a multiple of 8 from {} to the "
                             "cluster size {})",
                             h.header_length, kV3MinHeaderLength, h.cluster_size()));
  }
  if (h.header_length > head.size()) {
    return Error(fmt::format("truncated: the {}-byte header extends past the end of the file "
                             "(size {:#x})",
                             h.header_length, file_size));
  }
  if (h.header_length > 104) h.compression_type = static_cast<CompressionType>(p[104]);
  return Ok();
}

Status ParseFeatureNames(std::span<const uint8_t> data, Header& h) {
  if (data.size() % kFeatureNameEntrySize != 0) {
    return Error(fmt::format("feature name table of {} bytes is not a multiple of {}",
                             data.size(), kFeatureNameEntrySize));
  }
  for (size_t i = 0; i < data.size(); i += kFeatureNameEntrySize) {
    const uint8_t* entry = data.data() + i;
    const char* name = reinterpret_cast<const char*>(entry + 2);
    h.feature_names.push_back(
        FeatureName{entry[0], entry[1], std::string(name, strnlen(name, kFeatureNameLength))});
  }
  return Ok();
}

Status ParseExtension(uint32_t type, std::span<const uint8_t> data, Header& h) {
  switch (type) {
    case kExtensionBackingFormat: {
      std::string name(reinterpret_cast<const char*>(data.data()), data.size());
      if (name.find('\0') != std::string::npos || name.empty()) {
        return Error("the backing format header extension is not a valid name");
      }
      h.backing_format = std::move(name);
      return Ok();
    }
    case kExtensionFeatureNames:
      return ParseFeatureNames(data, h);
    case kExtensionBitmaps:
      if (data.size() < 24) {
        return Error(fmt::format("bitmaps header extension of {} bytes is too short (needs 24)",
                                 data.size()));
      }
      h.bitmaps = BitmapsExtension{LoadBe32(data.data()), LoadBe64(data.data() + 8),
                                   LoadBe64(data.data() + 16)};
      return Ok();
    default:
      h.other_extensions.push_back(RawExtension{type, {data.begin(), data.end()}});
      return Ok();
  }
}

// Walks the extension area from the end of the fixed header to `area_end`.
Status ParseExtensions(std::span<const uint8_t> head, uint64_t area_end, uint64_t file_size,
                       Header& h) {
  std::set<uint32_t> seen;
  uint64_t pos = h.header_length;
  while (pos + 8 <= area_end) {
    if (pos + 8 > head.size()) {
      return Error(fmt::format("truncated: header extension at offset {:#x} extends past the end "
                               "of the file (size {:#x})",
                               pos, file_size));
    }
    uint32_t type = LoadBe32(head.data() + pos);
    uint32_t length = LoadBe32(head.data() + pos + 4);
    if (type == kExtensionEnd) return Ok();
    uint64_t data_end = pos + 8 + length;
    if (data_end > area_end) {
      return Error(fmt::format("header extension {:#x} at offset {:#x} ({} bytes) does not fit in "
                               "the header area ending at {:#x}",
                               type, pos, length, area_end));
    }
    if (data_end > head.size()) {
      return Error(fmt::format("truncated: header extension {:#x} at offset {:#x} extends past "
                               "the end of the file (size {:#x})",
                               type, pos, file_size));
    }
    if (!seen.insert(type).second && type != kExtensionFeatureNames) {
      return Error(fmt::format("header extension {:#x} appears twice", type));
    }
    TRY(ParseExtension(type, head.subspan(pos + 8, length), h));
    pos += 8 + RoundUp8(length);
  }
  return Ok();
}

const char* KnownIncompatibleName(int bit) {
  switch (bit) {
    case 0: return "dirty bit";
    case 1: return "corrupt bit";
    case 2: return "external data file";
    case 3: return "compression type";
    case 4: return "extended L2 entries";
    default: return nullptr;
  }
}

Status CheckFeatures(const Header& h) {
  uint64_t unknown = h.incompatible_features & ~kIncompatKnown;
  if (unknown != 0) {
    return Error(fmt::format("uses unsupported incompatible features: {}",
                             DescribeIncompatibleFeatures(h, unknown)));
  }
  if (h.incompatible_features & kIncompatDataFile) {
    return Error("uses an external data file, which forkvmm does not support");
  }
  if (h.incompatible_features & kIncompatExtendedL2) {
    return Error("uses extended L2 entries (subclusters), which forkvmm does not support");
  }
  auto type = static_cast<unsigned>(h.compression_type);
  if (type > static_cast<unsigned>(CompressionType::kZstd)) {
    return Error(fmt::format("uses unknown compression type {}", type));
  }
  bool type_bit = (h.incompatible_features & kIncompatCompression) != 0;
  if (type_bit != (h.compression_type != CompressionType::kZlib)) {
    return Error(fmt::format("the compression type bit is {} but compression_type is {}",
                             type_bit ? "set" : "clear", type));
  }
  return Ok();
}

Status CheckEncryption(uint32_t method) {
  switch (method) {
    case 0: return Ok();
    case 1: return Error("is encrypted (AES), which forkvmm does not support");
    case 2: return Error("is encrypted (LUKS), which forkvmm does not support");
    default: return Error(fmt::format("uses unknown encryption method {}", method));
  }
}

Status CheckBackingFileName(std::span<const uint8_t> head, uint64_t file_size, Header& h) {
  if (h.backing_file_offset == 0) {
    h.backing_file_size = 0;
    return Ok();
  }
  if (h.backing_file_size == 0 || h.backing_file_size > kMaxBackingFileNameLength) {
    return Error(fmt::format("invalid backing file name length {} (must be 1 to {})",
                             h.backing_file_size, kMaxBackingFileNameLength));
  }
  uint64_t end = h.backing_file_offset + h.backing_file_size;
  if (h.backing_file_offset < h.header_length || end > h.cluster_size()) {
    return Error(fmt::format("backing file name at offset {:#x} ({} bytes) is outside the "
                             "header cluster",
                             h.backing_file_offset, h.backing_file_size));
  }
  if (end > head.size()) {
    return Error(fmt::format("truncated: backing file name at offset {:#x} extends past the end "
                             "of the file (size {:#x})",
                             h.backing_file_offset, file_size));
  }
  h.backing_file.assign(reinterpret_cast<const char*>(head.data() + h.backing_file_offset),
                        h.backing_file_size);
  if (h.backing_file.find('\0') != std::string::npos) {
    return Error("the backing file name contains a NUL byte");
  }
  return Ok();
}

// Checks that a table of `bytes` bytes at `offset` is cluster-aligned,
// after the header cluster and inside the file.
Status CheckTablePlacement(std::string_view name, uint64_t offset, uint64_t bytes,
                           uint64_t cluster_size, uint64_t file_size) {
  if (offset % cluster_size != 0) {
    return Error(fmt::format("{} offset {:#x} is not aligned to the cluster size {}", name,
                             offset, cluster_size));
  }
  if (offset < cluster_size) {
    return Error(fmt::format("{} at offset {:#x} overlaps the header", name, offset));
  }
  if (offset > file_size || bytes > file_size - offset) {
    return Error(fmt::format("{} at offset {:#x} extends past the end of the file (size {:#x})",
                             name, offset, file_size));
  }
  return Ok();
}

Status CheckL1Table(const Header& h, uint64_t file_size) {
  constexpr uint64_t kMaxVirtualSize = uint64_t{1} << 63;
  if (h.size >= kMaxVirtualSize) {
    return Error(fmt::format("virtual size {:#x} is too large", h.size));
  }
  uint64_t bytes_per_l1_entry = h.cluster_size() * h.l2_entries();
  uint64_t needed = DivRoundUp(h.size, bytes_per_l1_entry);
  uint64_t l1_bytes = uint64_t{h.l1_size} * 8;
  if (l1_bytes > kMaxL1TableBytes) {
    return Error(fmt::format("L1 table of {} entries exceeds the limit of {} MiB", h.l1_size,
                             kMaxL1TableBytes >> 20));
  }
  if (h.l1_size < needed) {
    return Error(fmt::format("L1 table has {} entries, too few for the virtual size {} "
                             "(needs {})",
                             h.l1_size, h.size, needed));
  }
  if (h.l1_size == 0) return Ok();
  return CheckTablePlacement("L1 table", h.l1_table_offset, l1_bytes, h.cluster_size(),
                             file_size);
}

Status CheckRefcountTable(const Header& h, uint64_t file_size) {
  if (h.refcount_table_clusters == 0) return Error("the refcount table is empty");
  uint64_t bytes = uint64_t{h.refcount_table_clusters} << h.cluster_bits;
  if (bytes > kMaxRefcountTableBytes) {
    return Error(fmt::format("refcount table of {} clusters exceeds the limit of {} MiB",
                             h.refcount_table_clusters, kMaxRefcountTableBytes >> 20));
  }
  TRY(CheckTablePlacement("refcount table", h.refcount_table_offset, bytes, h.cluster_size(),
                          file_size));
  uint64_t l1_bytes = uint64_t{h.l1_size} * 8;
  if (l1_bytes > 0 && h.refcount_table_offset < h.l1_table_offset + l1_bytes &&
      h.l1_table_offset < h.refcount_table_offset + bytes) {
    return Error(fmt::format("refcount table at offset {:#x} overlaps the L1 table at offset "
                             "{:#x}",
                             h.refcount_table_offset, h.l1_table_offset));
  }
  return Ok();
}

Status CheckSnapshotTable(const Header& h, uint64_t file_size) {
  if (h.nb_snapshots > kMaxSnapshots) {
    return Error(fmt::format("{} snapshots exceed the limit of {}", h.nb_snapshots,
                             kMaxSnapshots));
  }
  if (h.nb_snapshots == 0) return Ok();
  // Each snapshot table entry has at least 40 bytes.
  return CheckTablePlacement("snapshot table", h.snapshots_offset, uint64_t{h.nb_snapshots} * 40,
                             h.cluster_size(), file_size);
}

}  // namespace

std::string DescribeIncompatibleFeatures(const Header& header, uint64_t bits) {
  std::string out;
  for (int bit = 0; bit < 64; ++bit) {
    if ((bits & (uint64_t{1} << bit)) == 0) continue;
    if (!out.empty()) out += ", ";
    auto named = std::find_if(header.feature_names.begin(), header.feature_names.end(),
                              [bit](const FeatureName& f) { return f.type == 0 && f.bit == bit; });
    if (named != header.feature_names.end() && !named->name.empty()) {
      out += fmt::format("'{}' (bit {})", named->name, bit);
    } else if (const char* known = KnownIncompatibleName(bit)) {
      out += fmt::format("'{}' (bit {})", known, bit);
    } else {
      out += fmt::format("bit {}", bit);
    }
  }
  return out;
}

namespace {

// Parses the header and requires the tables to end by `tables_end`.
Result<Header> ParseHeaderWithTablesEnd(std::span<const uint8_t> head, uint64_t file_size,
                                        uint64_t tables_end) {
  if (head.size() < kV2HeaderLength) {
    return Error(fmt::format("truncated: the file has {} bytes, fewer than a {}-byte qcow2 header",
                             file_size, kV2HeaderLength));
  }
  if (LoadBe32(head.data()) != kMagic) return Error("not a qcow2 image (bad magic)");
  Header h;
  ParseFixedFields(head, h);
  if (h.version != 2 && h.version != 3) {
    return Error(fmt::format("unsupported qcow2 version {} (supported: 2, 3)", h.version));
  }
  if (h.cluster_bits < kMinClusterBits || h.cluster_bits > kMaxClusterBits) {
    return Error(fmt::format("invalid cluster_bits {} (supported: {} to {}, 512 B to 2 MiB "
                             "clusters)",
                             h.cluster_bits, kMinClusterBits, kMaxClusterBits));
  }
  if (h.version == 2) {
    h.header_length = kV2HeaderLength;
    h.refcount_order = 4;
  } else {
    TRY(ParseVersion3Fields(head, file_size, h));
  }
  if (h.refcount_order > 6) {
    return Error(fmt::format("invalid refcount_order {} (at most 6, 64-bit refcounts)",
                             h.refcount_order));
  }
  TRY(CheckEncryption(h.crypt_method));

  uint64_t area_end = h.cluster_size();
  if (h.backing_file_offset > h.header_length && h.backing_file_offset < area_end) {
    area_end = h.backing_file_offset;
  }
  TRY(ParseExtensions(head, area_end, file_size, h));
  TRY(CheckFeatures(h));
  TRY(CheckBackingFileName(head, file_size, h));
  TRY(CheckL1Table(h, tables_end));
  TRY(CheckRefcountTable(h, tables_end));
  TRY(CheckSnapshotTable(h, tables_end));
  if (h.bitmaps && h.bitmaps->directory_size > kMaxSnapshotTableBytes) {
    return Error(fmt::format("bitmap directory of {} bytes is too large", h.bitmaps->directory_size));
  }
  return h;
}

}  // namespace

Result<Header> ParseHeader(std::span<const uint8_t> head, uint64_t file_size) {
  return ParseHeaderWithTablesEnd(head, file_size, file_size);
}

Result<Header> ParseHeaderAllowingTablesPastEnd(std::span<const uint8_t> head, uint64_t file_size) {
  return ParseHeaderWithTablesEnd(head, file_size, UINT64_MAX);
}

std::vector<FeatureName> StandardFeatureNames() {
  return {
      {0, 0, "dirty bit"},        {0, 1, "corrupt bit"},         {0, 2, "external data file"},
      {0, 3, "compression type"}, {0, 4, "extended L2 entries"}, {1, 0, "lazy refcounts"},
      {2, 0, "bitmaps"},          {2, 1, "raw external data"},
  };
}

namespace {

// Appends one extension at `pos`; returns false when it does not fit.
bool PutExtension(std::vector<uint8_t>& buf, uint64_t& pos, uint32_t type,
                  std::span<const uint8_t> data) {
  uint64_t end = pos + 8 + RoundUp8(data.size());
  if (end > buf.size()) return false;
  StoreBe32(buf.data() + pos, type);
  StoreBe32(buf.data() + pos + 4, static_cast<uint32_t>(data.size()));
  std::copy(data.begin(), data.end(), buf.begin() + static_cast<std::ptrdiff_t>(pos + 8));
  pos = end;
  return true;
}

std::vector<uint8_t> EncodeFeatureNames(const std::vector<FeatureName>& names) {
  std::vector<uint8_t> out(names.size() * kFeatureNameEntrySize, 0);
  for (size_t i = 0; i < names.size(); ++i) {
    uint8_t* entry = out.data() + i * kFeatureNameEntrySize;
    entry[0] = names[i].type;
    entry[1] = names[i].bit;
    std::memcpy(entry + 2, names[i].name.data(),
                std::min(names[i].name.size(), kFeatureNameLength));
  }
  return out;
}

void EncodeFixedFields(const Header& h, uint8_t* p) {
  StoreBe32(p, kMagic);
  StoreBe32(p + 4, h.version);
  StoreBe64(p + 8, h.backing_file_offset);
  StoreBe32(p + 16, h.backing_file_size);
  StoreBe32(p + 20, h.cluster_bits);
  StoreBe64(p + 24, h.size);
  StoreBe32(p + 32, h.crypt_method);
  StoreBe32(p + 36, h.l1_size);
  StoreBe64(p + 40, h.l1_table_offset);
  StoreBe64(p + 48, h.refcount_table_offset);
  StoreBe32(p + 56, h.refcount_table_clusters);
  StoreBe32(p + 60, h.nb_snapshots);
  StoreBe64(p + 64, h.snapshots_offset);
  if (h.version < 3) return;
  StoreBe64(p + 72, h.incompatible_features);
  StoreBe64(p + 80, h.compatible_features);
  StoreBe64(p + 88, h.autoclear_features);
  StoreBe32(p + 96, h.refcount_order);
  StoreBe32(p + 100, h.header_length);
  if (h.header_length > 104) p[104] = static_cast<uint8_t>(h.compression_type);
}

}  // namespace

Result<std::vector<uint8_t>> SerializeHeader(Header& h) {
  std::vector<uint8_t> buf(h.cluster_size(), 0);
  if (h.version == 2) {
    h.header_length = kV2HeaderLength;
  } else if (h.header_length < kV3HeaderLength) {
    h.header_length = kV3HeaderLength;
  }
  Error too_big(fmt::format("the header, its extensions and the backing file name do not fit "
                            "in one {}-byte cluster",
                            h.cluster_size()));
  uint64_t pos = h.header_length;
  if (pos > buf.size()) return too_big;
  if (h.backing_format) {
    const auto* name = reinterpret_cast<const uint8_t*>(h.backing_format->data());
    if (!PutExtension(buf, pos, kExtensionBackingFormat,
                      std::span(name, h.backing_format->size()))) {
      return too_big;
    }
  }
  if (!h.feature_names.empty()) {
    std::vector<uint8_t> table = EncodeFeatureNames(h.feature_names);
    if (!PutExtension(buf, pos, kExtensionFeatureNames, table)) return too_big;
  }
  if (h.bitmaps) {
    uint8_t data[24] = {};
    StoreBe32(data, h.bitmaps->count);
    StoreBe64(data + 8, h.bitmaps->directory_size);
    StoreBe64(data + 16, h.bitmaps->directory_offset);
    if (!PutExtension(buf, pos, kExtensionBitmaps, data)) return too_big;
  }
  for (const RawExtension& ext : h.other_extensions) {
    if (!PutExtension(buf, pos, ext.type, ext.data)) return too_big;
  }
  if (pos + 8 > buf.size()) return too_big;
  pos += 8;  // the end marker is already zero
  if (h.backing_file.empty()) {
    h.backing_file_offset = 0;
    h.backing_file_size = 0;
  } else {
    if (h.backing_file.size() > kMaxBackingFileNameLength) {
      return Error(fmt::format("backing file name of {} bytes exceeds the limit of {}",
                               h.backing_file.size(), kMaxBackingFileNameLength));
    }
    if (pos + h.backing_file.size() > buf.size()) return too_big;
    h.backing_file_offset = pos;
    h.backing_file_size = static_cast<uint32_t>(h.backing_file.size());
    std::memcpy(buf.data() + pos, h.backing_file.data(), h.backing_file.size());
  }
  EncodeFixedFields(h, buf.data());
  return buf;
}

Result<L2Entry> DecodeL2Entry(uint64_t raw, uint32_t cluster_bits, uint32_t version) {
  const uint64_t cluster_size = uint64_t{1} << cluster_bits;
  if (raw & kFlagCompressed) {
    if (raw & kFlagCopied) {
      return Error(fmt::format("compressed L2 entry {:#x} has the copied flag set", raw));
    }
    const uint32_t offset_bits = 62 - (cluster_bits - 8);
    uint64_t offset = raw & ((uint64_t{1} << offset_bits) - 1);
    if (offset >> 56) {
      return Error(fmt::format("compressed L2 entry {:#x} has an offset beyond 56 bits", raw));
    }
    uint64_t extra_sectors = (raw >> offset_bits) & ((uint64_t{1} << (cluster_bits - 8)) - 1);
    uint64_t size = (extra_sectors + 1) * 512 - (offset & 511);
    return L2Entry{ClusterType::kCompressed, offset, size, false};
  }
  if (raw & kL2ReservedMask) {
    return Error(fmt::format("L2 entry {:#x} has reserved bits set", raw));
  }
  L2Entry entry;
  entry.host_offset = raw & kOffsetMask;
  entry.copied = (raw & kFlagCopied) != 0;
  if (entry.host_offset & (cluster_size - 1)) {
    return Error(fmt::format("L2 entry {:#x} points to host offset {:#x}, which is not aligned "
                             "to the cluster size {}",
                             raw, entry.host_offset, cluster_size));
  }
  if (raw & kFlagZero) {
    if (version < 3) return Error(fmt::format("L2 entry {:#x} has the zero flag in a version 2 image", raw));
    entry.type = ClusterType::kZero;
    return entry;
  }
  if (entry.host_offset == 0) {
    if (entry.copied) {
      return Error(fmt::format("L2 entry {:#x} points to host offset 0 (the header)", raw));
    }
    return L2Entry{};
  }
  entry.type = ClusterType::kNormal;
  return entry;
}

uint64_t EncodeCompressedEntry(uint64_t host_offset, uint64_t compressed_bytes,
                               uint32_t cluster_bits) {
  const uint32_t offset_bits = 62 - (cluster_bits - 8);
  uint64_t extra_sectors = ((host_offset + compressed_bytes - 1) >> 9) - (host_offset >> 9);
  return kFlagCompressed | host_offset | (extra_sectors << offset_bits);
}

}  // namespace forkvmm::block::qcow2
