// The qcow2 on-disk format: header, header extensions and table entries.
//
// Follows the qcow2 specification (docs/interop/qcow2.txt in QEMU's source,
// versions 2 and 3). All fields are big-endian on disk; the structs here
// hold host-order values. Parsing validates every field against the file
// size and against fixed caps, so nothing read from a hostile header can
// make the caller read outside the file or allocate more than the caps.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "vmm/base/result.h"

namespace forkvmm::block::qcow2 {

inline constexpr uint32_t kMagic = 0x514649fb;  // "QFI\xfb"
inline constexpr uint32_t kV2HeaderLength = 72;
inline constexpr uint32_t kV3MinHeaderLength = 104;
// The v3 header with the compression_type field and its padding.
inline constexpr uint32_t kV3HeaderLength = 112;

inline constexpr uint32_t kMinClusterBits = 9;   // 512 B
inline constexpr uint32_t kMaxClusterBits = 21;  // 2 MiB, QEMU's limit
inline constexpr uint32_t kMaxBackingFileNameLength = 1023;

// Caps on what a header can make a reader allocate. They match QEMU's
// implementation limits, so every image QEMU can open fits.
inline constexpr uint64_t kMaxL1TableBytes = 32 << 20;
inline constexpr uint64_t kMaxRefcountTableBytes = 8 << 20;
inline constexpr uint32_t kMaxSnapshots = 65536;
inline constexpr uint64_t kMaxSnapshotTableBytes = 64 << 20;

// Header extension types.
inline constexpr uint32_t kExtensionEnd = 0;
inline constexpr uint32_t kExtensionBackingFormat = 0xe2792aca;
inline constexpr uint32_t kExtensionFeatureNames = 0x6803f857;
inline constexpr uint32_t kExtensionBitmaps = 0x23852875;
inline constexpr uint32_t kExtensionCryptoHeader = 0x0537be77;
inline constexpr uint32_t kExtensionDataFile = 0x44415441;

// Incompatible feature bits.
inline constexpr uint64_t kIncompatDirty = 1ull << 0;
inline constexpr uint64_t kIncompatCorrupt = 1ull << 1;
inline constexpr uint64_t kIncompatDataFile = 1ull << 2;
inline constexpr uint64_t kIncompatCompression = 1ull << 3;
inline constexpr uint64_t kIncompatExtendedL2 = 1ull << 4;
inline constexpr uint64_t kIncompatKnown = (1ull << 5) - 1;
// Compatible and autoclear feature bits.
inline constexpr uint64_t kCompatLazyRefcounts = 1ull << 0;
inline constexpr uint64_t kAutoclearBitmaps = 1ull << 0;
inline constexpr uint64_t kAutoclearDataFileRaw = 1ull << 1;

enum class CompressionType : uint8_t { kZlib = 0, kZstd = 1 };

// Table entry fields (qcow2 "Cluster mapping" and "Host cluster management").
inline constexpr uint64_t kOffsetMask = 0x00fffffffffffe00ull;      // bits 9-55
inline constexpr uint64_t kFlagCopied = 1ull << 63;                 // refcount is exactly one
inline constexpr uint64_t kFlagCompressed = 1ull << 62;
inline constexpr uint64_t kFlagZero = 1ull << 0;                    // v3 standard clusters
inline constexpr uint64_t kL1ReservedMask = 0x7f000000000001ffull;  // bits 0-8, 56-62
inline constexpr uint64_t kL2ReservedMask = 0x3f000000000001feull;  // bits 1-8, 56-61
inline constexpr uint64_t kRefcountTableReservedMask = 0x1ffull;    // bits 0-8

struct FeatureName {
  uint8_t type;  // 0 incompatible, 1 compatible, 2 autoclear
  uint8_t bit;
  std::string name;
};

// An extension kept verbatim so a header rewrite preserves it.
struct RawExtension {
  uint32_t type;
  std::vector<uint8_t> data;
};

struct BitmapsExtension {
  uint32_t count = 0;
  uint64_t directory_size = 0;
  uint64_t directory_offset = 0;
};

struct Header {
  uint32_t version = 3;
  uint64_t backing_file_offset = 0;
  uint32_t backing_file_size = 0;
  uint32_t cluster_bits = 16;
  uint64_t size = 0;
  uint32_t crypt_method = 0;
  uint32_t l1_size = 0;
  uint64_t l1_table_offset = 0;
  uint64_t refcount_table_offset = 0;
  uint32_t refcount_table_clusters = 0;
  uint32_t nb_snapshots = 0;
  uint64_t snapshots_offset = 0;
  uint64_t incompatible_features = 0;
  uint64_t compatible_features = 0;
  uint64_t autoclear_features = 0;
  uint32_t refcount_order = 4;
  uint32_t header_length = kV3HeaderLength;
  CompressionType compression_type = CompressionType::kZlib;

  // From the extensions and the backing file name.
  std::string backing_file;
  std::optional<std::string> backing_format;
  std::vector<FeatureName> feature_names;
  std::optional<BitmapsExtension> bitmaps;
  std::vector<RawExtension> other_extensions;

  uint64_t cluster_size() const { return uint64_t{1} << cluster_bits; }
  uint32_t refcount_bits() const { return 1u << refcount_order; }
  // Entries per L2 table (standard 8-byte entries).
  uint64_t l2_entries() const { return cluster_size() / 8; }
  bool dirty() const { return (incompatible_features & kIncompatDirty) != 0; }
  bool corrupt() const { return (incompatible_features & kIncompatCorrupt) != 0; }
  bool lazy_refcounts() const { return (compatible_features & kCompatLazyRefcounts) != 0; }
};

// Parses and validates the header at the start of an image. `head` is the
// first min(file size, cluster size) bytes of the file, or more, and
// `file_size` the size of the file. Errors describe the problem without the
// file name, which the caller adds.
//
// Rejects a bad magic or version, cluster sizes outside 512 B to 2 MiB,
// encryption, external data files, extended L2 entries, unknown compression
// types, and unknown incompatible features (named from the feature name table
// when it names them). Also rejects any table that lies outside the file,
// overlaps the header or another table, or exceeds the caps above. A dirty or
// corrupt image parses, and the caller decides what it may do with it.
Result<Header> ParseHeader(std::span<const uint8_t> head, uint64_t file_size);

// Parses like ParseHeader, but accepts L1, refcount and snapshot tables that
// extend past the end of the file, because `img check` reports them as
// corruptions. Alignment, overlaps and size caps are still checked.
Result<Header> ParseHeaderAllowingTablesPastEnd(std::span<const uint8_t> head, uint64_t file_size);

// The number of bytes ParseHeader needs from the start of the file.
inline constexpr uint64_t kMaxHeaderRead = uint64_t{1} << kMaxClusterBits;

// Encodes `header` into a cluster-sized buffer: fixed fields, the
// extensions (backing format, feature names, bitmaps, the preserved other
// extensions), the end marker, then the backing file name. Sets
// header.backing_file_offset/size. Fails when it does not fit in one cluster.
Result<std::vector<uint8_t>> SerializeHeader(Header& header);

// Feature names this implementation writes into new images.
std::vector<FeatureName> StandardFeatureNames();

// Names the set incompatible feature bits in `bits` ("dirty, bit 7").
std::string DescribeIncompatibleFeatures(const Header& header, uint64_t bits);

// A decoded L2 entry.
enum class ClusterType { kUnallocated, kZero, kNormal, kCompressed };
struct L2Entry {
  ClusterType type = ClusterType::kUnallocated;
  uint64_t host_offset = 0;  // kNormal, kZero with preallocation, kCompressed (byte offset)
  uint64_t compressed_size = 0;  // bytes the compressed data may span
  bool copied = false;           // refcount is exactly one
};

// Decodes an L2 entry; fails on reserved bits, misaligned offsets and
// flags that contradict each other.
Result<L2Entry> DecodeL2Entry(uint64_t raw, uint32_t cluster_bits, uint32_t version);
// Encodes a compressed cluster descriptor (used by tests).
uint64_t EncodeCompressedEntry(uint64_t host_offset, uint64_t compressed_bytes,
                               uint32_t cluster_bits);

// Big-endian helpers.
uint16_t LoadBe16(const uint8_t* p);
uint32_t LoadBe32(const uint8_t* p);
uint64_t LoadBe64(const uint8_t* p);
void StoreBe16(uint8_t* p, uint16_t v);
void StoreBe32(uint8_t* p, uint32_t v);
void StoreBe64(uint8_t* p, uint64_t v);

// Rounds up `value` divided by `divisor` (divisor > 0).
constexpr uint64_t DivRoundUp(uint64_t value, uint64_t divisor) {
  return value / divisor + (value % divisor != 0);
}

}  // namespace forkvmm::block::qcow2
