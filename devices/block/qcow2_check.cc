#include "devices/block/qcow2_check.h"

#include <fmt/core.h>

#include <algorithm>
#include <map>
#include <set>

#include "devices/block/qcow2_refcount.h"

namespace forkvmm::block::qcow2 {
namespace {

// Reference counts are kept in 16 bits per host cluster; a count that
// reaches the maximum stays there and is compared as "at least".
constexpr uint16_t kSaturated = UINT16_MAX;
constexpr uint64_t kMaxSnapshotExtraData = 1024;
// Limits the per-cluster counters to 1 GiB of memory.
constexpr uint64_t kMaxCheckedClusters = uint64_t{1} << 29;

uint64_t RoundUp8(uint64_t value) { return (value + 7) & ~uint64_t{7}; }

class Checker {
 public:
  Checker(ImageFile& file, Header& header, uint64_t file_size, CheckReport& report)
      : file_(file),
        header_(header),
        file_size_(file_size),
        report_(report),
        cs_(header.cluster_size()),
        entries_per_block_((cs_ * 8) >> header.refcount_order) {}

  // Walks the image and applies the repairs of `mode`. Copied flags are
  // fixed only with `fix_copied`, once the refcounts they follow are right.
  Status Run(RepairMode mode, bool fix_copied);

 private:
  void Problem(bool corruption, std::string message);
  void Reference(uint64_t offset, uint64_t bytes);
  uint64_t BytesInFile(uint64_t offset, uint64_t bytes) const;
  void ReadTable(std::string_view name, uint64_t offset, std::span<uint8_t> out);
  uint64_t Stored(uint64_t cluster);
  void LoadRefcountTable();
  void WalkRefcountTable();
  void WalkL1(uint64_t l1_offset, uint64_t l1_size, bool active);
  bool CheckL1Entry(uint64_t entry_offset, uint64_t index, uint64_t entry);
  void WalkL2(uint64_t l2_offset, bool active);
  void CheckCopied(uint64_t entry_offset, uint64_t raw, uint64_t cluster, bool copied,
                   std::string_view what);
  void WalkSnapshots();
  void WalkBitmaps();
  Status Compare(RepairMode mode);
  Status ApplyFixes();
  Status RebuildRefcounts();
  Status FixTableEntries();

  ImageFile& file_;
  Header& header_;
  uint64_t file_size_;
  CheckReport& report_;
  uint64_t cs_;
  uint64_t entries_per_block_;

  std::vector<uint16_t> refs_;  // references per host cluster
  std::vector<uint64_t> table_;
  std::set<uint64_t> invalid_blocks_;                  // table indexes
  std::map<uint64_t, std::vector<uint8_t>> blocks_;  // table index -> block
  uint64_t next_contiguous_ = 0;
  // Repairs: (cluster, new refcount), and entries whose copied flag is wrong.
  std::vector<std::pair<uint64_t, uint64_t>> refcount_fixes_;
  bool needs_rebuild_ = false;
  bool fix_copied_ = false;
  bool clear_empty_l1_entries_ = false;
  std::vector<std::pair<uint64_t, uint64_t>> entry_fixes_;  // (file offset, new entry)
};

void Checker::Problem(bool corruption, std::string message) {
  if (corruption) {
    ++report_.corruptions;
  } else {
    ++report_.leaks;
  }
  if (report_.messages.size() < kMaxCheckMessages) {
    report_.messages.push_back(std::move(message));
  } else {
    ++report_.messages_dropped;
  }
}

void Checker::Reference(uint64_t offset, uint64_t bytes) {
  if (bytes == 0) return;
  uint64_t first = offset / cs_;
  uint64_t last = (offset + bytes - 1) / cs_;
  for (uint64_t c = first; c <= last; ++c) {
    if (c >= refs_.size()) {
      Problem(true, fmt::format("ERROR cluster {} is referenced but lies past the end of the "
                                "file (size {:#x})",
                                c, file_size_));
      return;
    }
    if (refs_[c] < kSaturated) ++refs_[c];
    report_.image_end_offset = std::max(report_.image_end_offset, (c + 1) * cs_);
  }
}

// Returns how many of the `bytes` bytes at `offset` lie inside the file.
uint64_t Checker::BytesInFile(uint64_t offset, uint64_t bytes) const {
  if (offset >= file_size_) return 0;
  return std::min(bytes, file_size_ - offset);
}

// Reads a table that may extend past the end of the file, as QEMU does:
// the part past the end reads as zeros and is reported as a corruption.
void Checker::ReadTable(std::string_view name, uint64_t offset, std::span<uint8_t> out) {
  if (BytesInFile(offset, out.size()) < out.size()) {
    Problem(true, fmt::format("ERROR {} at offset {:#x} ({} bytes) extends past the end of the "
                              "file (size {:#x})",
                              name, offset, out.size(), file_size_));
  }
  if (!file_.ReadZeroFilled(offset, out).ok()) ++report_.check_errors;
}

uint64_t Checker::Stored(uint64_t cluster) {
  uint64_t index = cluster / entries_per_block_;
  if (index >= table_.size() || table_[index] == 0 || invalid_blocks_.count(index)) return 0;
  auto it = blocks_.find(index);
  if (it == blocks_.end()) {
    std::vector<uint8_t> block(cs_);
    if (!file_.ReadExact(table_[index] & ~kRefcountTableReservedMask, block).ok()) {
      ++report_.check_errors;
      invalid_blocks_.insert(index);
      return 0;
    }
    it = blocks_.emplace(index, std::move(block)).first;
  }
  return GetRefcountEntry(it->second.data(), cluster % entries_per_block_, header_.refcount_order);
}

void Checker::LoadRefcountTable() {
  std::vector<uint8_t> raw(uint64_t{header_.refcount_table_clusters} * cs_);
  ReadTable("refcount table", header_.refcount_table_offset, raw);
  table_.resize(raw.size() / 8);
  for (size_t i = 0; i < table_.size(); ++i) table_[i] = LoadBe64(raw.data() + i * 8);
}

void Checker::WalkRefcountTable() {
  const uint64_t table_bytes = uint64_t{header_.refcount_table_clusters} * cs_;
  Reference(header_.refcount_table_offset,
            BytesInFile(header_.refcount_table_offset, table_bytes));
  for (uint64_t i = 0; i < table_.size(); ++i) {
    uint64_t entry = table_[i];
    if (entry == 0) continue;
    uint64_t offset = entry & ~kRefcountTableReservedMask;
    if ((entry & kRefcountTableReservedMask) != 0 || offset % cs_ != 0) {
      Problem(true, fmt::format("ERROR refcount table entry {} ({:#x}) is not a cluster-aligned "
                                "offset",
                                i, entry));
      invalid_blocks_.insert(i);
    } else if (offset >= file_size_) {
      Problem(true, fmt::format("ERROR refcount block {} at offset {:#x} is past the end of the "
                                "file",
                                i, offset));
      invalid_blocks_.insert(i);
    } else {
      Reference(offset, cs_);
    }
  }
}

void Checker::CheckCopied(uint64_t entry_offset, uint64_t raw, uint64_t cluster, bool copied,
                          std::string_view what) {
  uint64_t refcount = Stored(cluster);
  if ((refcount == 1) == copied) return;
  Problem(true, fmt::format("ERROR {} entry {:#x} at offset {:#x}: copied flag is {} but the "
                            "refcount is {}",
                            what, raw, entry_offset, copied ? "set" : "clear", refcount));
  if (fix_copied_) {
    entry_fixes_.emplace_back(entry_offset, copied ? raw & ~kFlagCopied : raw | kFlagCopied);
  }
}

// Reports a non-zero L1 entry at `entry_offset` that is invalid, and returns
// whether its L2 table should be walked. An entry with reserved bits but a
// usable offset is still walked, so that the clusters it reaches are not
// counted as leaks and freed by a leak repair.
bool Checker::CheckL1Entry(uint64_t entry_offset, uint64_t index, uint64_t entry) {
  const uint64_t offset = entry & kOffsetMask;
  if (offset == 0) {
    // Both forkvmm and QEMU read such an entry as unallocated, so clearing it
    // changes no data.
    Problem(true, fmt::format("ERROR L1 table entry {} ({:#x}) has flags or reserved bits set "
                              "but no L2 table offset",
                              index, entry));
    if (clear_empty_l1_entries_) entry_fixes_.emplace_back(entry_offset, 0);
    return false;
  }
  if (entry & kL1ReservedMask) {
    Problem(true, fmt::format("ERROR L1 table entry {} ({:#x}) has reserved bits set", index,
                              entry));
  }
  if (offset % cs_ != 0) {
    Problem(true, fmt::format("ERROR L1 table entry {} ({:#x}): L2 table offset {:#x} is not "
                              "cluster-aligned",
                              index, entry, offset));
    return false;
  }
  if (offset >= file_size_) {
    Problem(true, fmt::format("ERROR L1 table entry {} ({:#x}): L2 table offset {:#x} is past "
                              "the end of the file (size {:#x})",
                              index, entry, offset, file_size_));
    return false;
  }
  return true;
}

void Checker::WalkL1(uint64_t l1_offset, uint64_t l1_size, bool active) {
  std::vector<uint8_t> raw(l1_size * 8);
  ReadTable("L1 table", l1_offset, raw);
  for (uint64_t i = 0; i < l1_size; ++i) {
    uint64_t entry = LoadBe64(raw.data() + i * 8);
    if (entry == 0 || !CheckL1Entry(l1_offset + i * 8, i, entry)) continue;
    uint64_t offset = entry & kOffsetMask;
    Reference(offset, cs_);
    if (active) {
      CheckCopied(l1_offset + i * 8, entry, offset / cs_, entry & kFlagCopied, "L1");
    }
    WalkL2(offset, active);
  }
}

void Checker::WalkL2(uint64_t l2_offset, bool active) {
  std::vector<uint8_t> raw(cs_);
  ReadTable("L2 table", l2_offset, raw);
  const uint64_t entries = cs_ / 8;
  for (uint64_t j = 0; j < entries; ++j) {
    uint64_t value = LoadBe64(raw.data() + j * 8);
    if (value == 0) continue;
    Result<L2Entry> entry = DecodeL2Entry(value, header_.cluster_bits, header_.version);
    if (!entry.ok()) {
      Problem(true, fmt::format("ERROR L2 table at offset {:#x}, entry {}: {}", l2_offset, j,
                                entry.error().message()));
      // qemu-img check 7.2 still counts the cluster as referenced, so a leak
      // repair must not free it.
      uint64_t host = value & kOffsetMask;
      if ((value & kFlagCompressed) == 0 && host != 0 && host % cs_ == 0 && host < file_size_) {
        Reference(host, cs_);
      }
      continue;
    }
    switch (entry->type) {
      case ClusterType::kUnallocated:
        break;
      case ClusterType::kZero:
        if (entry->host_offset == 0) break;
        Reference(entry->host_offset, cs_);
        if (active) {
          CheckCopied(l2_offset + j * 8, value, entry->host_offset / cs_, entry->copied, "L2");
        }
        break;
      case ClusterType::kNormal:
        Reference(entry->host_offset, cs_);
        if (!active) break;
        ++report_.allocated_clusters;
        if (next_contiguous_ != 0 && entry->host_offset != next_contiguous_) {
          ++report_.fragmented_clusters;
        }
        next_contiguous_ = entry->host_offset + cs_;
        CheckCopied(l2_offset + j * 8, value, entry->host_offset / cs_, entry->copied, "L2");
        break;
      case ClusterType::kCompressed:
        Reference(entry->host_offset, entry->compressed_size);
        if (!active) break;
        ++report_.allocated_clusters;
        ++report_.compressed_clusters;
        break;
    }
  }
}

void Checker::WalkSnapshots() {
  if (header_.nb_snapshots == 0) return;
  uint64_t pos = header_.snapshots_offset;
  for (uint32_t i = 0; i < header_.nb_snapshots; ++i) {
    uint8_t fixed[40];
    if (pos - header_.snapshots_offset > kMaxSnapshotTableBytes ||
        !file_.ReadExact(pos, fixed).ok()) {
      Problem(true, fmt::format("ERROR snapshot table entry {} at offset {:#x} is unreadable", i,
                                pos));
      return;
    }
    uint64_t l1_offset = LoadBe64(fixed);
    uint64_t l1_size = LoadBe32(fixed + 8);
    uint64_t id_size = LoadBe16(fixed + 12);
    uint64_t name_size = LoadBe16(fixed + 14);
    uint64_t extra_size = LoadBe32(fixed + 36);
    if (extra_size > kMaxSnapshotExtraData) {
      Problem(true, fmt::format("ERROR snapshot {} has {} bytes of extra data (at most {})", i,
                                extra_size, kMaxSnapshotExtraData));
      return;
    }
    pos += RoundUp8(40 + extra_size + id_size + name_size);
    if (l1_size * 8 > kMaxL1TableBytes || l1_offset % cs_ != 0 || l1_offset < cs_ ||
        l1_offset > file_size_ || l1_size * 8 > file_size_ - l1_offset) {
      Problem(true, fmt::format("ERROR snapshot {} has an invalid L1 table ({} entries at offset "
                                "{:#x})",
                                i, l1_size, l1_offset));
      continue;
    }
    Reference(l1_offset, l1_size * 8);
    WalkL1(l1_offset, l1_size, /*active=*/false);
  }
  Reference(header_.snapshots_offset, pos - header_.snapshots_offset);
}

void Checker::WalkBitmaps() {
  if (!header_.bitmaps) return;
  const BitmapsExtension& ext = *header_.bitmaps;
  if (ext.directory_offset % cs_ != 0 || ext.directory_offset > file_size_ ||
      ext.directory_size > file_size_ - ext.directory_offset) {
    Problem(true, fmt::format("ERROR bitmap directory at offset {:#x} ({} bytes) is outside the "
                              "file",
                              ext.directory_offset, ext.directory_size));
    return;
  }
  std::vector<uint8_t> dir(ext.directory_size);
  if (!file_.ReadExact(ext.directory_offset, dir).ok()) {
    ++report_.check_errors;
    return;
  }
  Reference(ext.directory_offset, ext.directory_size);
  for (uint64_t pos = 0; pos + 24 <= dir.size();) {
    const uint8_t* entry = dir.data() + pos;
    uint64_t table_offset = LoadBe64(entry);
    uint64_t table_size = LoadBe32(entry + 8);
    uint64_t name_size = LoadBe16(entry + 18);
    uint64_t extra_size = LoadBe32(entry + 20);
    pos += RoundUp8(24 + extra_size + name_size);
    if (table_offset % cs_ != 0 || table_offset > file_size_ ||
        table_size * 8 > file_size_ - table_offset) {
      Problem(true, fmt::format("ERROR bitmap table at offset {:#x} is outside the file",
                                table_offset));
      continue;
    }
    std::vector<uint8_t> table(table_size * 8);
    if (!file_.ReadExact(table_offset, table).ok()) {
      ++report_.check_errors;
      continue;
    }
    Reference(table_offset, table.size());
    for (uint64_t i = 0; i < table_size; ++i) {
      uint64_t data = LoadBe64(table.data() + i * 8) & kOffsetMask;
      if (data != 0) Reference(data, cs_);
    }
  }
}

Status Checker::Compare(RepairMode mode) {
  const uint64_t max_refcount = header_.refcount_order == 6
                                    ? UINT64_MAX
                                    : (uint64_t{1} << header_.refcount_bits()) - 1;
  auto compare = [&](uint64_t c, uint64_t expected) {
    uint64_t stored = Stored(c);
    // Like QEMU, the image ends after the last cluster that is referenced or
    // has a refcount.
    if ((stored > 0 || expected > 0) && c < refs_.size()) {
      report_.image_end_offset = std::max(report_.image_end_offset, (c + 1) * cs_);
    }
    if (stored == expected || (expected == kSaturated && stored >= kSaturated)) return;
    bool too_low = stored < expected;
    Problem(too_low, fmt::format("{} cluster {}: refcount {}, references {}",
                                 too_low ? "ERROR" : "Leaked", c, stored, expected));
    if (mode == RepairMode::kNone || (too_low && mode != RepairMode::kAll)) return;
    uint64_t index = c / entries_per_block_;
    if (expected == kSaturated || expected > max_refcount) {
      needs_rebuild_ = true;  // reported as unrepairable below
    } else if (index >= table_.size() || table_[index] == 0 || invalid_blocks_.count(index)) {
      needs_rebuild_ = true;
    }
    refcount_fixes_.emplace_back(c, expected);
  };
  for (uint64_t c = 0; c < refs_.size(); ++c) compare(c, refs_[c]);
  // Refcounts of clusters past the end of the file count as leaks.
  for (uint64_t index = 0; index < table_.size(); ++index) {
    if (table_[index] == 0 || invalid_blocks_.count(index)) continue;
    uint64_t first = std::max<uint64_t>(index * entries_per_block_, refs_.size());
    for (uint64_t c = first; c < (index + 1) * entries_per_block_; ++c) compare(c, 0);
  }
  return Ok();
}

Status Checker::ApplyFixes() {
  if (needs_rebuild_) return RebuildRefcounts();
  for (auto [cluster, value] : refcount_fixes_) {
    uint64_t index = cluster / entries_per_block_;
    std::vector<uint8_t>& block = blocks_.at(index);
    SetRefcountEntry(block.data(), cluster % entries_per_block_, header_.refcount_order, value);
    uint64_t first_byte = ((cluster % entries_per_block_) << header_.refcount_order) / 8;
    uint64_t length = std::max<uint64_t>(1, header_.refcount_bits() / 8);
    TRY(file_.WriteAll((table_[index] & ~kRefcountTableReservedMask) + first_byte,
                       std::span(block.data() + first_byte, length)));
  }
  return Ok();
}

Status Checker::RebuildRefcounts() {
  // The old refcount structures are replaced, so their clusters become free.
  auto unreference = [&](uint64_t offset, uint64_t count) {
    for (uint64_t c = offset / cs_; c < offset / cs_ + count && c < refs_.size(); ++c) {
      if (refs_[c] > 0 && refs_[c] < kSaturated) --refs_[c];
    }
  };
  unreference(header_.refcount_table_offset, header_.refcount_table_clusters);
  for (uint64_t i = 0; i < table_.size(); ++i) {
    if (table_[i] != 0 && !invalid_blocks_.count(i)) {
      unreference(table_[i] & ~kRefcountTableReservedMask, 1);
    }
  }
  const uint64_t max_refcount = header_.refcount_order == 6
                                    ? UINT64_MAX
                                    : (uint64_t{1} << header_.refcount_bits()) - 1;
  uint64_t used_end = 0;
  for (uint64_t c = 0; c < refs_.size(); ++c) {
    if (refs_[c] == 0) continue;
    used_end = c + 1;
    if (refs_[c] == kSaturated || refs_[c] > max_refcount) {
      return Error(fmt::format("{}: cannot rebuild refcounts: cluster {} has {} references, more "
                               "than {}-bit refcounts hold",
                               file_.path(), c, refs_[c], header_.refcount_bits()));
    }
  }
  // New table and blocks go after everything in use and after the end of
  // the file, so writing them cannot destroy anything.
  const uint64_t start = std::max(used_end, DivRoundUp(file_size_, cs_));
  uint64_t table_clusters = 1;
  uint64_t blocks = 0;
  for (;;) {
    uint64_t total = start + table_clusters + blocks;
    uint64_t need_blocks = DivRoundUp(total, entries_per_block_);
    uint64_t need_table = DivRoundUp(need_blocks * 8, cs_);
    if (need_blocks == blocks && need_table == table_clusters) break;
    blocks = need_blocks;
    table_clusters = std::max<uint64_t>(need_table, 1);
  }
  if (table_clusters * cs_ > kMaxRefcountTableBytes) {
    return Error(fmt::format("{}: cannot rebuild refcounts: the table would exceed {} MiB",
                             file_.path(), kMaxRefcountTableBytes >> 20));
  }
  const uint64_t total = start + table_clusters + blocks;
  refs_.resize(total, 0);
  for (uint64_t c = start; c < total; ++c) refs_[c] = 1;

  std::vector<uint8_t> table(table_clusters * cs_, 0);
  std::vector<uint8_t> block(cs_);
  for (uint64_t b = 0; b < blocks; ++b) {
    std::fill(block.begin(), block.end(), uint8_t{0});
    for (uint64_t c = b * entries_per_block_; c < std::min(total, (b + 1) * entries_per_block_);
         ++c) {
      SetRefcountEntry(block.data(), c - b * entries_per_block_, header_.refcount_order, refs_[c]);
    }
    uint64_t offset = (start + table_clusters + b) * cs_;
    TRY(file_.WriteAll(offset, block));
    StoreBe64(table.data() + b * 8, offset);
  }
  TRY(file_.WriteAll(start * cs_, table));
  TRY(file_.DataSync());
  uint8_t fields[12];
  StoreBe64(fields, start * cs_);
  StoreBe32(fields + 8, static_cast<uint32_t>(table_clusters));
  TRY(file_.WriteAll(48, fields));  // refcount_table_offset and refcount_table_clusters
  TRY(file_.DataSync());
  header_.refcount_table_offset = start * cs_;
  header_.refcount_table_clusters = static_cast<uint32_t>(table_clusters);
  return Ok();
}

Status Checker::FixTableEntries() {
  for (auto [offset, value] : entry_fixes_) {
    uint8_t raw[8];
    StoreBe64(raw, value);
    TRY(file_.WriteAll(offset, raw));
  }
  return Ok();
}

Status Checker::Run(RepairMode mode, bool fix_copied) {
  uint64_t clusters = DivRoundUp(file_size_, cs_);
  if (clusters > kMaxCheckedClusters) {
    return Error(fmt::format("{}: too many clusters to check ({})", file_.path(), clusters));
  }
  refs_.assign(clusters, 0);
  report_.total_clusters = DivRoundUp(header_.size, cs_);
  LoadRefcountTable();
  fix_copied_ = fix_copied && mode == RepairMode::kAll;
  clear_empty_l1_entries_ = mode == RepairMode::kAll;

  Reference(0, cs_);
  const uint64_t l1_bytes = uint64_t{header_.l1_size} * 8;
  Reference(header_.l1_table_offset, BytesInFile(header_.l1_table_offset, l1_bytes));
  WalkRefcountTable();
  WalkL1(header_.l1_table_offset, header_.l1_size, /*active=*/true);
  WalkSnapshots();
  WalkBitmaps();
  TRY(Compare(mode));
  if (mode == RepairMode::kNone) return Ok();
  TRY(ApplyFixes());
  TRY(FixTableEntries());
  return file_.DataSync();
}

Result<Header> ReadHeader(ImageFile& file, uint64_t file_size) {
  std::vector<uint8_t> head(std::min<uint64_t>(file_size, kMaxHeaderRead));
  TRY(file.ReadExact(0, head));
  Result<Header> header = ParseHeaderAllowingTablesPastEnd(head, file_size);
  if (!header.ok()) return std::move(header).error().WithContext(file.path());
  return header;
}

Status ClearIncompatibleBits(ImageFile& file, Header& header, uint64_t bits) {
  if (header.version < 3 || (header.incompatible_features & bits) == 0) return Ok();
  header.incompatible_features &= ~bits;
  uint8_t raw[8];
  StoreBe64(raw, header.incompatible_features);
  TRY(file.WriteAll(72, raw));
  return file.DataSync();
}

Result<CheckReport> CheckOnce(ImageFile& file, RepairMode mode, bool fix_copied = false) {
  ASSIGN_OR_RETURN(uint64_t file_size, file.Size());
  ASSIGN_OR_RETURN(Header header, ReadHeader(file, file_size));
  CheckReport report;
  Checker checker(file, header, file_size, report);
  TRY(checker.Run(mode, fix_copied));
  return report;
}

// Repairs refcounts, then (for kAll) copied flags against the repaired refcounts.
Status Repair(ImageFile& file, RepairMode mode) {
  TRY(CheckOnce(file, mode, /*fix_copied=*/false));
  if (mode == RepairMode::kAll) TRY(CheckOnce(file, mode, /*fix_copied=*/true));
  return Ok();
}

}  // namespace

Result<CheckReport> CheckImage(const std::string& path, RepairMode mode) {
  ASSIGN_OR_RETURN(ImageFile file, ImageFile::Open(path, mode != RepairMode::kNone));
  ASSIGN_OR_RETURN(CheckReport first, CheckOnce(file, RepairMode::kNone));
  if (mode == RepairMode::kNone) return first;
  CheckReport after = first;
  if (first.corruptions > 0 || first.leaks > 0) {
    TRY(Repair(file, mode));
    // Check again and report the image as the repair left it.
    ASSIGN_OR_RETURN(after, CheckOnce(file, RepairMode::kNone));
    after.leaks_fixed = first.leaks > after.leaks ? first.leaks - after.leaks : 0;
    after.corruptions_fixed =
        first.corruptions > after.corruptions ? first.corruptions - after.corruptions : 0;
  }
  // A consistent image loses its dirty bit, and with kAll its corrupt bit.
  if (after.corruptions == 0) {
    ASSIGN_OR_RETURN(uint64_t file_size, file.Size());
    ASSIGN_OR_RETURN(Header header, ReadHeader(file, file_size));
    uint64_t clear = kIncompatDirty | (mode == RepairMode::kAll ? kIncompatCorrupt : 0);
    TRY(ClearIncompatibleBits(file, header, clear));
  }
  return after;
}

Status RepairRefcountsForOpen(ImageFile& file, Header& header) {
  TRY(Repair(file, RepairMode::kAll));
  ASSIGN_OR_RETURN(CheckReport after, CheckOnce(file, RepairMode::kNone));
  if (after.corruptions > 0) {
    return Error(fmt::format("{}: the image is dirty and {} corruptions remain after repairing "
                             "its refcounts; see 'forkvmm img check'",
                             file.path(), after.corruptions));
  }
  // The repair may have moved the refcount table; reread the header.
  ASSIGN_OR_RETURN(uint64_t file_size, file.Size());
  ASSIGN_OR_RETURN(header, ReadHeader(file, file_size));
  return ClearIncompatibleBits(file, header, kIncompatDirty);
}

}  // namespace forkvmm::block::qcow2
