// A qcow2 image (versions 2 and 3) as a BlockBackend.
//
// Reads and writes go cluster by cluster through the L1 and L2 tables.
// Data of allocated clusters moves through the IoQueue, which is io_uring in
// the asynchronous API. Lookups, allocation, copy-on-write from the backing
// layer and compressed clusters are handled synchronously on the calling
// thread.
//
// Update order, which keeps the image consistent if the process dies at
// any point (a crash leaves at worst leaked clusters, never a reference to
// a cluster whose refcount is too low):
//   1. a new cluster's refcount is raised (written through) and the file
//      extended before anything can refer to it;
//   2. its data is written;
//   3. L2 tables are written back on Flush() or eviction, after an
//      fdatasync that makes (1) and (2) durable;
//   4. the L1 table is written after another fdatasync;
//   5. refcounts of clusters that are no longer referenced are lowered only
//      after the tables that dropped them are written, and only while no
//      asynchronous I/O is in flight.
// Flush() therefore makes everything durable that completed before it.
//
// Open rejects, with one line naming the file, everything ParseHeader
// rejects and a corrupt image opened read-write. A dirty image (or one with lazy
// refcounts that was not closed cleanly) opened read-write first has its
// refcounts rebuilt from the L1/L2 tables.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "devices/block/block_backend.h"
#include "devices/block/image_file.h"
#include "devices/block/qcow2_cluster_set.h"
#include "devices/block/qcow2_format.h"
#include "devices/block/qcow2_l2_cache.h"
#include "devices/block/qcow2_refcount.h"

namespace forkvmm::block {

class Qcow2Backend final : public BlockBackend {
 public:
  // Opens an image without its backing file (see AttachBacking); it is
  // writable when `file` was opened writable.
  static Result<std::unique_ptr<Qcow2Backend>> Open(ImageFile file);
  ~Qcow2Backend() override;

  ImageFormat format() const override { return ImageFormat::kQcow2; }
  Status Unallocate(uint64_t offset, uint64_t length) override;
  const qcow2::Header& header() const { return header_; }
  uint64_t cluster_size() const { return cluster_size_; }
  // Takes ownership of the opened backing layer.
  void AttachBacking(std::unique_ptr<BlockBackend> backing) { backing_ = std::move(backing); }

  void StartRead(IoQueue& queue, uint64_t offset, std::span<const iovec> iov,
                 IoCallback done) override;

 protected:
  void StartWrite(IoQueue& queue, uint64_t offset, std::span<const iovec> iov,
                  IoCallback done) override;
  void StartFlush(IoQueue& queue, IoCallback done) override;
  Status DoWriteZeroes(uint64_t offset, uint64_t length) override;
  Status DoDiscard(uint64_t offset, uint64_t length) override;
  Result<Extent> DoGetExtent(uint64_t offset, uint64_t max_length) override;
  Status DoReopenReadOnly() override;

 private:
  Qcow2Backend(ImageFile file, qcow2::Header header, uint64_t file_size);

  Status LoadL1Table();
  Status PrepareForWriting();
  void FindMetadata(uint64_t file_size);

  // Mapping.
  Result<uint64_t> L2TableOffset(uint64_t guest_offset);
  Result<qcow2::L2Cache::Table*> LoadL2Table(uint64_t table_offset);
  Result<qcow2::L2Entry> Lookup(uint64_t guest_offset);
  uint64_t L2Index(uint64_t guest_offset) const;

  // Reading.
  void ReadFromBacking(IoQueue& queue, uint64_t guest_offset, std::span<const iovec> iov,
                       const IoCallback& piece_done);
  Status ReadCompressed(const qcow2::L2Entry& entry, std::span<uint8_t> cluster);
  Status ReadGuestCluster(uint64_t guest_cluster, const qcow2::L2Entry& entry,
                          std::span<uint8_t> cluster);

  // Writing.
  Result<bool> CanWriteInPlace(uint64_t guest_offset, const qcow2::L2Entry& entry);
  Status WriteAllocating(uint64_t guest_offset, std::span<const iovec> data,
                         const qcow2::L2Entry& old);
  Result<uint64_t> PrepareL2ForWrite(uint64_t guest_offset);
  Status SetL2Entry(uint64_t guest_offset, uint64_t raw);
  void ReleaseCluster(const qcow2::L2Entry& old);
  Status ChangeWholeCluster(uint64_t guest_cluster, bool zero_flag);
  Status WriteZeroBytes(uint64_t offset, uint64_t length);

  // Write-back.
  Status SyncBarrier();
  Status EvictL2Table();
  Status WriteL2Table(const qcow2::L2Cache::Table& table);
  Status FlushMetadata();
  Status FreePendingClusters();
  Status CheckHostCluster(uint64_t guest_offset, uint64_t host_offset) const;
  Error Corrupt(uint64_t guest_offset, const std::string& what) const;

  ImageFile file_;
  qcow2::Header header_;
  uint64_t cluster_size_;
  uint32_t cluster_bits_;
  uint64_t l2_entries_;
  uint64_t file_size_;  // read-only images; writable ones use refcounts_->file_end()

  std::vector<uint64_t> l1_;
  uint64_t l1_dirty_first_ = UINT64_MAX;  // dirty L1 entries, first and one past last
  uint64_t l1_dirty_end_ = 0;
  qcow2::L2Cache l2_cache_;

  // Writable images only.
  qcow2::ClusterSet metadata_;
  std::unique_ptr<qcow2::Refcounts> refcounts_;
  // Host clusters whose refcount drops once the tables that dropped them are
  // on disk: (cluster index, was an L2 table).
  std::vector<std::pair<uint64_t, bool>> pending_frees_;

  // The most recently decompressed cluster, keyed by its raw L2 entry.
  uint64_t decompressed_entry_ = 0;
  std::vector<uint8_t> decompressed_;
  std::vector<uint8_t> compressed_;
  std::vector<uint8_t> scratch_;
  bool open_complete_ = false;
};

}  // namespace forkvmm::block
