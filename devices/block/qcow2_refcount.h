// Reference counts of the host clusters of a writable qcow2 image.
//
// Refcount blocks are written through at once. The refcount table entry of
// a newly created block waits for WriteTableEntries(), which the image calls
// after an fdatasync. So after a power loss the table never points at a
// block whose contents did not reach the disk. Growing the table writes the
// new table and its blocks, syncs, then switches the header, so a crash
// leaves either the old or the new table in use.
//
// Refcount widths of 1 to 64 bits (refcount_order 0 to 6) are supported.
// Not thread-safe.
#pragma once

#include <cstdint>
#include <set>
#include <unordered_map>
#include <vector>

#include "devices/block/image_file.h"
#include "devices/block/qcow2_cluster_set.h"
#include "devices/block/qcow2_format.h"
#include "vmm/base/result.h"

namespace forkvmm::block::qcow2 {

// Reads entry `index` of a refcount block with 2^order-bit entries.
uint64_t GetRefcountEntry(const uint8_t* block, uint64_t index, uint32_t order);
// Writes entry `index`; `value` must fit in the entry width.
void SetRefcountEntry(uint8_t* block, uint64_t index, uint32_t order, uint64_t value);

class Refcounts {
 public:
  // `file`, `header` and `metadata` belong to the image and outlive this
  // object; growing the table updates `header` and `metadata`.
  Refcounts(ImageFile& file, Header& header, ClusterSet& metadata)
      : file_(file), header_(header), metadata_(metadata) {}

  // Reads the refcount table; `file_size` is the current size of the file.
  Status Load(uint64_t file_size);

  uint64_t entries_per_block() const { return entries_per_block_; }
  uint64_t max_refcount() const { return max_refcount_; }
  const std::vector<uint64_t>& table() const { return table_; }
  // The size of the file, which allocation keeps past every allocated cluster.
  uint64_t file_end() const { return file_end_; }

  Result<uint64_t> Get(uint64_t cluster);
  // Sets a refcount, creating its refcount block (and growing the table)
  // when the block does not exist yet.
  Status Set(uint64_t cluster, uint64_t value);
  Status Increment(uint64_t cluster);
  Status Decrement(uint64_t cluster);

  // Finds `count` contiguous free clusters, sets their refcounts to 1 and
  // extends the file to cover them. Returns the byte offset of the first.
  Result<uint64_t> Allocate(uint64_t count);

  bool has_unwritten_table_entries() const { return !unwritten_entries_.empty(); }
  // Writes the refcount table entries of blocks created since the last call.
  // The caller has synced the file first.
  Status WriteTableEntries();

 private:
  // Returns the block for table index `index`, or nullptr when it has none.
  Result<std::vector<uint8_t>*> LoadBlock(uint64_t index);
  Status CreateBlock(uint64_t index);
  Status GrowTable(uint64_t min_entries);
  Status WriteEntry(uint64_t block_offset, const std::vector<uint8_t>& block, uint64_t index);
  Result<bool> IsFree(uint64_t cluster);
  Error Corrupt(const std::string& what) const;

  ImageFile& file_;
  Header& header_;
  ClusterSet& metadata_;
  uint64_t cluster_size_ = 0;
  uint64_t entries_per_block_ = 0;
  uint64_t max_refcount_ = 0;
  uint64_t file_end_ = 0;
  std::vector<uint64_t> table_;
  std::set<uint64_t> unwritten_entries_;
  std::unordered_map<uint64_t, std::vector<uint8_t>> blocks_;  // table index -> block
  uint64_t free_hint_ = 0;                                     // no free cluster below this
};

}  // namespace forkvmm::block::qcow2
