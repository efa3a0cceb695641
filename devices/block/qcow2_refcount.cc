#include "devices/block/qcow2_refcount.h"

#include <fmt/core.h>

#include <algorithm>
#include <map>

namespace forkvmm::block::qcow2 {

uint64_t GetRefcountEntry(const uint8_t* block, uint64_t index, uint32_t order) {
  switch (order) {
    case 0:
    case 1:
    case 2: {
      // Sub-byte entries: entry 0 sits in the least significant bits of byte 0.
      uint32_t bits = 1u << order;
      uint64_t bit = index * bits;
      return (block[bit / 8] >> (bit % 8)) & ((1u << bits) - 1);
    }
    case 3: return block[index];
    case 4: return LoadBe16(block + index * 2);
    case 5: return LoadBe32(block + index * 4);
    default: return LoadBe64(block + index * 8);
  }
}

void SetRefcountEntry(uint8_t* block, uint64_t index, uint32_t order, uint64_t value) {
  switch (order) {
    case 0:
    case 1:
    case 2: {
      uint32_t bits = 1u << order;
      uint64_t bit = index * bits;
      auto mask = static_cast<uint8_t>(((1u << bits) - 1) << (bit % 8));
      uint8_t& byte = block[bit / 8];
      byte = static_cast<uint8_t>((byte & ~mask) | ((value << (bit % 8)) & mask));
      return;
    }
    case 3: block[index] = static_cast<uint8_t>(value); return;
    case 4: StoreBe16(block + index * 2, static_cast<uint16_t>(value)); return;
    case 5: StoreBe32(block + index * 4, static_cast<uint32_t>(value)); return;
    default: StoreBe64(block + index * 8, value); return;
  }
}

namespace {

// Refcount blocks kept in memory; blocks are written through, so dropping
// one loses nothing.
constexpr uint64_t kBlockCacheBytes = 4 << 20;
constexpr size_t kMinCachedBlocks = 16;

}  // namespace

Error Refcounts::Corrupt(const std::string& what) const {
  return Error(fmt::format("{}: {}; the image is corrupt (see 'forkvmm img check')", file_.path(),
                           what));
}

Status Refcounts::Load(uint64_t file_size) {
  cluster_size_ = header_.cluster_size();
  entries_per_block_ = (cluster_size_ * 8) >> header_.refcount_order;
  max_refcount_ = header_.refcount_order == 6 ? UINT64_MAX
                                              : (uint64_t{1} << header_.refcount_bits()) - 1;
  file_end_ = file_size;
  // ParseHeader checked that the table lies inside the file and under its cap.
  uint64_t bytes = uint64_t{header_.refcount_table_clusters} * cluster_size_;
  std::vector<uint8_t> raw(bytes);
  TRY(file_.ReadExact(header_.refcount_table_offset, raw));
  table_.resize(bytes / 8);
  for (size_t i = 0; i < table_.size(); ++i) table_[i] = LoadBe64(raw.data() + i * 8);
  blocks_.clear();
  unwritten_entries_.clear();
  free_hint_ = 0;
  return Ok();
}

Result<std::vector<uint8_t>*> Refcounts::LoadBlock(uint64_t index) {
  if (index >= table_.size() || table_[index] == 0) return nullptr;
  auto cached = blocks_.find(index);
  if (cached != blocks_.end()) return &cached->second;

  uint64_t entry = table_[index];
  uint64_t offset = entry & ~kRefcountTableReservedMask;
  if ((entry & kRefcountTableReservedMask) != 0 || offset % cluster_size_ != 0) {
    return Corrupt(fmt::format("refcount table entry {} ({:#x}) is not a cluster-aligned offset",
                               index, entry));
  }
  if (offset < cluster_size_ || offset > file_end_ || file_end_ - offset < cluster_size_) {
    return Corrupt(fmt::format("refcount block {} at offset {:#x} is outside the file "
                               "(size {:#x})",
                               index, offset, file_end_));
  }
  std::vector<uint8_t> block(cluster_size_);
  TRY(file_.ReadExact(offset, block));
  size_t capacity = std::max<size_t>(kMinCachedBlocks, kBlockCacheBytes / cluster_size_);
  if (blocks_.size() >= capacity) blocks_.erase(blocks_.begin());
  return &(blocks_[index] = std::move(block));
}

Result<uint64_t> Refcounts::Get(uint64_t cluster) {
  ASSIGN_OR_RETURN(std::vector<uint8_t>* block, LoadBlock(cluster / entries_per_block_));
  if (block == nullptr) return uint64_t{0};
  return GetRefcountEntry(block->data(), cluster % entries_per_block_, header_.refcount_order);
}

Status Refcounts::WriteEntry(uint64_t block_offset, const std::vector<uint8_t>& block,
                             uint64_t index) {
  uint64_t first_byte = (index << header_.refcount_order) / 8;
  uint64_t length = std::max<uint64_t>(1, header_.refcount_bits() / 8);
  return file_.WriteAll(block_offset + first_byte, std::span(block.data() + first_byte, length));
}

Status Refcounts::Set(uint64_t cluster, uint64_t value) {
  if (value > max_refcount_) {
    return Error(fmt::format("{}: the refcount of cluster {} would exceed {}, the maximum of "
                             "{}-bit refcounts",
                             file_.path(), cluster, max_refcount_, header_.refcount_bits()));
  }
  const uint64_t index = cluster / entries_per_block_;
  ASSIGN_OR_RETURN(std::vector<uint8_t>* block, LoadBlock(index));
  if (block == nullptr) {
    if (value == 0) return Ok();
    TRY(CreateBlock(index));
    ASSIGN_OR_RETURN(block, LoadBlock(index));
  }
  SetRefcountEntry(block->data(), cluster % entries_per_block_, header_.refcount_order, value);
  TRY(WriteEntry(table_[index] & ~kRefcountTableReservedMask, *block,
                 cluster % entries_per_block_));
  if (value == 0) free_hint_ = std::min(free_hint_, cluster);
  return Ok();
}

Status Refcounts::Increment(uint64_t cluster) {
  ASSIGN_OR_RETURN(uint64_t value, Get(cluster));
  if (value == max_refcount_) {
    return Error(fmt::format("{}: the refcount of cluster {} would exceed {}, the maximum of "
                             "{}-bit refcounts",
                             file_.path(), cluster, max_refcount_, header_.refcount_bits()));
  }
  return Set(cluster, value + 1);
}

Status Refcounts::Decrement(uint64_t cluster) {
  ASSIGN_OR_RETURN(uint64_t value, Get(cluster));
  if (value == 0) return Corrupt(fmt::format("freeing cluster {}, whose refcount is already 0", cluster));
  return Set(cluster, value - 1);
}

Status Refcounts::CreateBlock(uint64_t index) {
  if (index >= table_.size()) TRY(GrowTable(index + 1));
  if (table_[index] != 0) return Ok();  // growing the table created it
  // Every refcount in the block's range is zero while the block is missing,
  // so the block can describe itself: put it at the first cluster of its own
  // range that holds no metadata.
  const uint64_t first = index * entries_per_block_;
  uint64_t cluster = first;
  while (cluster < first + entries_per_block_ && metadata_.Contains(cluster)) ++cluster;
  if (cluster == first + entries_per_block_) {
    return Corrupt(fmt::format("refcount block {} is missing but its whole range holds metadata",
                               index));
  }
  std::vector<uint8_t> block(cluster_size_, 0);
  SetRefcountEntry(block.data(), cluster - first, header_.refcount_order, 1);
  uint64_t offset = cluster * cluster_size_;
  TRY(file_.WriteAll(offset, block));
  file_end_ = std::max(file_end_, offset + cluster_size_);
  table_[index] = offset;
  unwritten_entries_.insert(index);
  metadata_.Insert(cluster);
  blocks_[index] = std::move(block);
  return Ok();
}

Status Refcounts::WriteTableEntries() {
  for (uint64_t index : unwritten_entries_) {
    uint8_t raw[8];
    StoreBe64(raw, table_[index]);
    TRY(file_.WriteAll(header_.refcount_table_offset + index * 8, raw));
  }
  unwritten_entries_.clear();
  return Ok();
}

Result<bool> Refcounts::IsFree(uint64_t cluster) {
  ASSIGN_OR_RETURN(uint64_t value, Get(cluster));
  if (value != 0) return false;
  if (metadata_.Contains(cluster)) {
    return Corrupt(fmt::format("cluster {} holds metadata but its refcount is 0", cluster));
  }
  return true;
}

Result<uint64_t> Refcounts::Allocate(uint64_t count) {
  uint64_t start = 0;
  uint64_t first_free = UINT64_MAX;
  for (bool found = false; !found;) {
    uint64_t run = 0;
    for (uint64_t cluster = free_hint_; run < count; ++cluster) {
      ASSIGN_OR_RETURN(bool free, IsFree(cluster));
      if (!free) {
        run = 0;
        continue;
      }
      first_free = std::min(first_free, cluster);
      if (run++ == 0) start = cluster;
    }
    // Creating a missing refcount block takes a cluster of its own range,
    // which may be in the run; then search again.
    found = true;
    uint64_t last = start + count - 1;
    for (uint64_t index = start / entries_per_block_; index <= last / entries_per_block_; ++index) {
      ASSIGN_OR_RETURN(std::vector<uint8_t>* block, LoadBlock(index));
      if (block != nullptr) continue;
      TRY(CreateBlock(index));
      found = false;
    }
    if (!found) first_free = UINT64_MAX;
  }
  uint64_t end = (start + count) * cluster_size_;
  if (end > file_end_) {
    // Extend the file before the refcounts mark the clusters in use, so a
    // crash never leaves a refcount for a cluster past the end of the file.
    TRY(file_.Truncate(end));
    file_end_ = end;
  }
  for (uint64_t i = 0; i < count; ++i) TRY(Set(start + i, 1));
  free_hint_ = first_free == start ? start + count : first_free;
  return start * cluster_size_;
}

Status Refcounts::GrowTable(uint64_t min_entries) {
  const uint64_t per_cluster = cluster_size_ / 8;
  const uint64_t e = entries_per_block_;
  uint64_t entries = std::max<uint64_t>(min_entries, table_.size() * 2);
  uint64_t start = DivRoundUp(file_end_, cluster_size_);
  uint64_t table_clusters = 0;
  uint64_t end = 0;
  for (;;) {
    entries = DivRoundUp(entries, per_cluster) * per_cluster;
    if (entries * 8 > kMaxRefcountTableBytes) {
      return Error(fmt::format("{}: the refcount table would exceed the limit of {} MiB",
                               file_.path(), kMaxRefcountTableBytes >> 20));
    }
    table_clusters = entries / per_cluster;
    // The new table and the blocks it needs go at the end of the file; find
    // how many new blocks cover the table and themselves.
    uint64_t blocks = 0;
    for (;;) {
      end = start + table_clusters + blocks;
      uint64_t missing = 0;
      for (uint64_t i = start / e; i <= (end - 1) / e; ++i) {
        if (i >= table_.size() || table_[i] == 0) ++missing;
      }
      if (missing == blocks) break;
      blocks = missing;
    }
    if ((end - 1) / e < entries) break;
    entries = (end - 1) / e + 1;
  }

  std::vector<uint64_t> new_table = table_;
  new_table.resize(entries, 0);
  std::map<uint64_t, std::vector<uint8_t>> touched;
  uint64_t next_block = start + table_clusters;
  for (uint64_t i = start / e; i <= (end - 1) / e; ++i) {
    if (i < table_.size() && table_[i] != 0) {
      ASSIGN_OR_RETURN(std::vector<uint8_t>* block, LoadBlock(i));
      touched[i] = *block;
    } else {
      touched[i] = std::vector<uint8_t>(cluster_size_, 0);
      new_table[i] = next_block++ * cluster_size_;
    }
  }
  for (uint64_t c = start; c < end; ++c) {
    SetRefcountEntry(touched[c / e].data(), c % e, header_.refcount_order, 1);
  }
  for (const auto& [index, block] : touched) {
    TRY(file_.WriteAll(new_table[index] & ~kRefcountTableReservedMask, block));
  }
  std::vector<uint8_t> raw(entries * 8);
  for (size_t i = 0; i < entries; ++i) StoreBe64(raw.data() + i * 8, new_table[i]);
  TRY(file_.WriteAll(start * cluster_size_, raw));
  file_end_ = std::max(file_end_, end * cluster_size_);
  TRY(file_.DataSync());

  uint8_t fields[12];
  StoreBe64(fields, start * cluster_size_);
  StoreBe32(fields + 8, static_cast<uint32_t>(table_clusters));
  TRY(file_.WriteAll(48, fields));  // refcount_table_offset and refcount_table_clusters
  TRY(file_.DataSync());

  const uint64_t old_first = header_.refcount_table_offset / cluster_size_;
  const uint64_t old_count = header_.refcount_table_clusters;
  header_.refcount_table_offset = start * cluster_size_;
  header_.refcount_table_clusters = static_cast<uint32_t>(table_clusters);
  table_ = std::move(new_table);
  unwritten_entries_.clear();  // the new table was written with every entry
  for (auto& [index, block] : touched) blocks_[index] = std::move(block);
  metadata_.InsertRange(start, end - start);
  for (uint64_t i = 0; i < old_count; ++i) {
    metadata_.Erase(old_first + i);
    TRY(Decrement(old_first + i));
  }
  return Ok();
}

}  // namespace forkvmm::block::qcow2
