#include "devices/block/qcow2.h"

#include <fmt/core.h>

#include <algorithm>

#include "devices/block/qcow2_check.h"
#include "devices/block/qcow2_compress.h"
#include "vmm/base/log.h"

namespace forkvmm::block {

using qcow2::ClusterType;
using qcow2::L2Entry;

namespace {

// Memory for cached L2 tables; each table maps cluster_size / 8 clusters.
constexpr uint64_t kL2CacheBytes = 4 << 20;
constexpr uint64_t kMinL2CacheTables = 4;
constexpr uint64_t kMaxL2CacheTables = 1024;

// Counts the pieces of one request; runs `done` when the last one finishes.
class Tracker {
 public:
  explicit Tracker(IoCallback done) : done_(std::move(done)) {}

  // A callback for one more piece.
  static IoCallback Piece(const std::shared_ptr<Tracker>& tracker) {
    ++tracker->pending_;
    return [tracker](Status status) { tracker->Finish(std::move(status)); };
  }
  void Fail(Error error) {
    if (status_.ok()) status_ = std::move(error);
  }
  // Finishes one piece. The code that issues the pieces owns one extra piece
  // until it has issued them all, so `done` cannot run early.
  void Finish(Status status) {
    if (!status.ok() && status_.ok()) status_ = std::move(status);
    if (--pending_ == 0) {
      IoCallback done = std::move(done_);
      done(std::move(status_));
    }
  }

 private:
  int pending_ = 1;
  Status status_;
  IoCallback done_;
};

ExtentKind KindOf(const L2Entry& entry) {
  switch (entry.type) {
    case ClusterType::kNormal:
    case ClusterType::kCompressed: return ExtentKind::kData;
    case ClusterType::kZero: return ExtentKind::kZero;
    case ClusterType::kUnallocated: return ExtentKind::kUnallocated;
  }
  return ExtentKind::kUnallocated;
}

}  // namespace

Qcow2Backend::Qcow2Backend(ImageFile file, qcow2::Header header, uint64_t file_size)
    : BlockBackend(file.path(), header.size, !file.writable()),
      file_(std::move(file)),
      header_(std::move(header)),
      cluster_size_(header_.cluster_size()),
      cluster_bits_(header_.cluster_bits),
      l2_entries_(header_.l2_entries()),
      file_size_(file_size),
      l2_cache_(std::clamp(kL2CacheBytes / header_.cluster_size(), kMinL2CacheTables,
                           kMaxL2CacheTables),
                header_.l2_entries()) {}

Qcow2Backend::~Qcow2Backend() {
  // An image whose Open failed half-way has nothing to write back.
  if (open_complete_) FlushOnClose();
}

Result<std::unique_ptr<Qcow2Backend>> Qcow2Backend::Open(ImageFile file) {
  ASSIGN_OR_RETURN(uint64_t file_size, file.Size());
  // Read the first cluster, whose size is given by cluster_bits (bytes 20-23).
  std::vector<uint8_t> head(std::min<uint64_t>(file_size, 64 << 10));
  TRY(file.ReadExact(0, head));
  if (head.size() >= 24) {
    uint32_t bits = qcow2::LoadBe32(head.data() + 20);
    if (bits <= qcow2::kMaxClusterBits && (uint64_t{1} << bits) > head.size()) {
      head.resize(std::min<uint64_t>(file_size, uint64_t{1} << bits));
      TRY(file.ReadExact(0, head));
    }
  }
  Result<qcow2::Header> header = qcow2::ParseHeader(head, file_size);
  if (!header.ok()) return std::move(header).error().WithContext(file.path());

  std::unique_ptr<Qcow2Backend> image(
      new Qcow2Backend(std::move(file), std::move(header).value(), file_size));
  // Everything that can reject the image runs before a writable open
  // changes the file (refcount repair, autoclear bits).
  TRY(image->LoadL1Table());
  if (!image->read_only()) {
    TRY(image->PrepareForWriting());
    image->FindMetadata(image->refcounts_->file_end());
  }
  image->open_complete_ = true;
  return image;
}

Status Qcow2Backend::PrepareForWriting() {
  if (header_.corrupt()) {
    return Error(fmt::format("{}: the image is marked corrupt; open it read-only, or repair it "
                             "with 'forkvmm img check -r all'",
                             path_));
  }
  if (header_.dirty()) {
    // The image was not closed cleanly while using lazy refcounts, so its
    // refcounts may be too low; rebuild them before anything is allocated.
    LOG_INFO("{}: the dirty bit is set; repairing refcounts", path_);
    TRY(qcow2::RepairRefcountsForOpen(file_, header_));
  }
  if (header_.version >= 3 && header_.autoclear_features != 0) {
    // Writes do not maintain bitmaps or other autoclear features, so the
    // format requires clearing their bits before the first write.
    header_.autoclear_features = 0;
    uint8_t zero[8] = {};
    TRY(file_.WriteAll(88, zero));
    TRY(file_.DataSync());
  }
  ASSIGN_OR_RETURN(uint64_t file_size, file_.Size());
  refcounts_ = std::make_unique<qcow2::Refcounts>(file_, header_, metadata_);
  TRY(refcounts_->Load(file_size));
  return Ok();
}

Status Qcow2Backend::LoadL1Table() {
  // ParseHeader checked that the L1 table lies inside the file and under its cap.
  std::vector<uint8_t> raw(uint64_t{header_.l1_size} * 8);
  TRY(file_.ReadExact(header_.l1_table_offset, raw));
  l1_.resize(header_.l1_size);
  for (size_t i = 0; i < l1_.size(); ++i) l1_[i] = qcow2::LoadBe64(raw.data() + i * 8);
  return Ok();
}

void Qcow2Backend::FindMetadata(uint64_t file_size) {
  // Remember where metadata lives, so that neither the allocator nor a
  // guest write can land on it even if the refcounts or an L2 entry lie.
  auto add = [&](uint64_t offset) {
    if (offset != 0 && offset % cluster_size_ == 0 && offset < file_size) {
      metadata_.Insert(offset / cluster_size_);
    }
  };
  metadata_.Insert(0);
  metadata_.InsertRange(header_.l1_table_offset / cluster_size_,
                        qcow2::DivRoundUp(uint64_t{header_.l1_size} * 8, cluster_size_));
  metadata_.InsertRange(header_.refcount_table_offset / cluster_size_,
                        header_.refcount_table_clusters);
  for (uint64_t entry : refcounts_->table()) add(entry & ~qcow2::kRefcountTableReservedMask);
  for (uint64_t entry : l1_) add(entry & qcow2::kOffsetMask);
  // NOTE: tables of internal snapshots are not added; their refcounts are
  // non-zero in a consistent image, which keeps the allocator off them.
}

uint64_t Qcow2Backend::L2Index(uint64_t guest_offset) const {
  return (guest_offset >> cluster_bits_) & (l2_entries_ - 1);
}

Error Qcow2Backend::Corrupt(uint64_t guest_offset, const std::string& what) const {
  return Error(fmt::format("{}: guest offset {:#x}: {}; the image is corrupt", path_, guest_offset,
                           what));
}

Status Qcow2Backend::CheckHostCluster(uint64_t guest_offset, uint64_t host_offset) const {
  uint64_t end = refcounts_ ? refcounts_->file_end() : file_size_;
  if (host_offset < cluster_size_) {
    return Corrupt(guest_offset, fmt::format("data cluster at host offset {:#x} overlaps the header",
                                             host_offset));
  }
  if (host_offset >= end) {
    return Corrupt(guest_offset, fmt::format("data cluster at host offset {:#x} is past the end of "
                                             "the file (size {:#x})",
                                             host_offset, end));
  }
  return Ok();
}

Result<uint64_t> Qcow2Backend::L2TableOffset(uint64_t guest_offset) {
  uint64_t index = guest_offset >> (cluster_bits_ + cluster_bits_ - 3);
  if (index >= l1_.size()) {
    return Corrupt(guest_offset, fmt::format("L1 index {} is past the L1 table", index));
  }
  uint64_t entry = l1_[index];
  if (entry & qcow2::kL1ReservedMask) {
    return Corrupt(guest_offset,
                   fmt::format("L1 entry {} ({:#x}) has reserved bits set", index, entry));
  }
  uint64_t offset = entry & qcow2::kOffsetMask;
  if (offset == 0) return uint64_t{0};
  uint64_t end = refcounts_ ? refcounts_->file_end() : file_size_;
  if (offset % cluster_size_ != 0) {
    return Corrupt(guest_offset, fmt::format("L2 table offset {:#x} is not cluster-aligned", offset));
  }
  if (offset < cluster_size_ || offset > end || end - offset < cluster_size_) {
    return Corrupt(guest_offset, fmt::format("L2 table at offset {:#x} is outside the file "
                                             "(size {:#x})",
                                             offset, end));
  }
  return offset;
}

Result<qcow2::L2Cache::Table*> Qcow2Backend::LoadL2Table(uint64_t table_offset) {
  if (qcow2::L2Cache::Table* table = l2_cache_.Find(table_offset)) return table;
  if (l2_cache_.full()) TRY(EvictL2Table());
  std::vector<uint8_t> raw(cluster_size_);
  TRY(file_.ReadExact(table_offset, raw));
  std::vector<uint64_t> entries(l2_entries_);
  for (size_t i = 0; i < entries.size(); ++i) entries[i] = qcow2::LoadBe64(raw.data() + i * 8);
  return l2_cache_.Insert(table_offset, std::move(entries), false);
}

Result<L2Entry> Qcow2Backend::Lookup(uint64_t guest_offset) {
  ASSIGN_OR_RETURN(uint64_t table_offset, L2TableOffset(guest_offset));
  if (table_offset == 0) return L2Entry{};
  ASSIGN_OR_RETURN(qcow2::L2Cache::Table * table, LoadL2Table(table_offset));
  uint64_t raw = table->entries[L2Index(guest_offset)];
  Result<L2Entry> entry = qcow2::DecodeL2Entry(raw, cluster_bits_, header_.version);
  if (!entry.ok()) return Corrupt(guest_offset, entry.error().message());
  return entry;
}

// ---- Reading ----

void Qcow2Backend::StartRead(IoQueue& queue, uint64_t offset, std::span<const iovec> iov,
                             IoCallback done) {
  auto tracker = std::make_shared<Tracker>(std::move(done));
  const uint64_t length = IovecTotal(iov);
  for (uint64_t pos = 0; pos < length;) {
    const uint64_t guest = offset + pos;
    uint64_t n = std::min(length - pos, cluster_size_ - (guest & (cluster_size_ - 1)));
    Result<L2Entry> entry = Lookup(guest);
    if (!entry.ok()) {
      tracker->Fail(std::move(entry).error());
      break;
    }
    if (entry->type == ClusterType::kNormal) {
      Status valid = CheckHostCluster(guest, entry->host_offset);
      if (!valid.ok()) {
        tracker->Fail(std::move(valid).error());
        break;
      }
    }
    // Extend the piece over following clusters that continue it on the host
    // (or that are all unallocated), so one I/O covers them.
    while (pos + n < length && (entry->type == ClusterType::kNormal ||
                                entry->type == ClusterType::kUnallocated)) {
      Result<L2Entry> next = Lookup(guest + n);
      if (!next.ok() || next->type != entry->type) break;
      if (entry->type == ClusterType::kNormal &&
          (next->host_offset != entry->host_offset + ((guest + n) & ~(cluster_size_ - 1)) -
                                    (guest & ~(cluster_size_ - 1)) ||
           !CheckHostCluster(guest + n, next->host_offset).ok())) {
        break;
      }
      n += std::min(length - pos - n, cluster_size_);
    }
    IovecList slice = SliceIovecs(iov, pos, n);
    const uint64_t in_cluster = guest & (cluster_size_ - 1);
    switch (entry->type) {
      case ClusterType::kNormal:
        queue.Read(file_, entry->host_offset + in_cluster, slice, Tracker::Piece(tracker));
        break;
      case ClusterType::kZero:
        ZeroIovecs(slice);
        break;
      case ClusterType::kUnallocated:
        ReadFromBacking(queue, guest, slice, Tracker::Piece(tracker));
        break;
      case ClusterType::kCompressed: {
        // NOTE: compressed clusters are read and inflated synchronously on
        // the calling thread, also in the asynchronous API.
        Status read = ReadCompressed(*entry, {});
        if (!read.ok()) {
          tracker->Fail(Corrupt(guest, read.error().message()));
          tracker->Finish(Ok());
          return;
        }
        CopyToIovecs(slice, std::span(decompressed_).subspan(in_cluster, n));
        break;
      }
    }
    pos += n;
  }
  tracker->Finish(Ok());
}

void Qcow2Backend::ReadFromBacking(IoQueue& queue, uint64_t guest_offset,
                                   std::span<const iovec> iov, const IoCallback& piece_done) {
  const uint64_t length = IovecTotal(iov);
  const uint64_t backing_size = backing_ ? backing_->size() : 0;
  // Past the end of a shorter backing layer (or without one) the disk reads zeros.
  uint64_t covered = guest_offset >= backing_size ? 0 : std::min(length, backing_size - guest_offset);
  if (covered < length) ZeroIovecs(SliceIovecs(iov, covered, length - covered));
  if (covered == 0) {
    piece_done(Ok());
    return;
  }
  backing_->StartRead(queue, guest_offset, SliceIovecs(iov, 0, covered), piece_done);
}

Status Qcow2Backend::ReadCompressed(const L2Entry& entry, std::span<uint8_t> cluster) {
  if (decompressed_entry_ != entry.host_offset || decompressed_.size() != cluster_size_) {
    uint64_t end = refcounts_ ? refcounts_->file_end() : file_size_;
    if (entry.host_offset < cluster_size_ || entry.host_offset >= end) {
      return Error(fmt::format("compressed cluster at host offset {:#x} is outside the file "
                               "(size {:#x})",
                               entry.host_offset, end));
    }
    compressed_.resize(std::min(entry.compressed_size, end - entry.host_offset));
    TRY(file_.ReadExact(entry.host_offset, compressed_));
    decompressed_.resize(cluster_size_);
    decompressed_entry_ = UINT64_MAX;
    TRY(qcow2::DecompressCluster(header_.compression_type, compressed_, decompressed_));
    decompressed_entry_ = entry.host_offset;
  }
  if (!cluster.empty()) std::copy(decompressed_.begin(), decompressed_.end(), cluster.begin());
  return Ok();
}

Status Qcow2Backend::ReadGuestCluster(uint64_t guest_cluster, const L2Entry& entry,
                                      std::span<uint8_t> cluster) {
  switch (entry.type) {
    case ClusterType::kNormal:
      TRY(CheckHostCluster(guest_cluster, entry.host_offset));
      return file_.ReadZeroFilled(entry.host_offset, cluster);
    case ClusterType::kZero:
      std::fill(cluster.begin(), cluster.end(), uint8_t{0});
      return Ok();
    case ClusterType::kCompressed: {
      Status read = ReadCompressed(entry, cluster);
      if (!read.ok()) return Corrupt(guest_cluster, read.error().message());
      return Ok();
    }
    case ClusterType::kUnallocated: {
      std::fill(cluster.begin(), cluster.end(), uint8_t{0});
      uint64_t backing_size = backing_ ? backing_->size() : 0;
      if (guest_cluster >= backing_size) return Ok();
      uint64_t n = std::min<uint64_t>(cluster.size(), backing_size - guest_cluster);
      return backing_->Read(guest_cluster, cluster.first(n));
    }
  }
  return Ok();
}

// ---- Writing ----

void Qcow2Backend::StartWrite(IoQueue& queue, uint64_t offset, std::span<const iovec> iov,
                              IoCallback done) {
  auto tracker = std::make_shared<Tracker>(std::move(done));
  const uint64_t length = IovecTotal(iov);
  for (uint64_t pos = 0; pos < length;) {
    const uint64_t guest = offset + pos;
    const uint64_t in_cluster = guest & (cluster_size_ - 1);
    uint64_t n = std::min(length - pos, cluster_size_ - in_cluster);
    Result<L2Entry> entry = Lookup(guest);
    Result<bool> in_place = entry.ok() ? CanWriteInPlace(guest, *entry) : Result<bool>(false);
    Status status = !entry.ok() ? Status(entry.error()) : !in_place.ok() ? Status(in_place.error()) : Ok();
    if (status.ok() && *in_place) {
      // Extend over following clusters that continue this one on the host.
      while (pos + n < length) {
        const uint64_t next_guest = guest + n;
        Result<L2Entry> next = Lookup(next_guest);
        if (!next.ok() || next->type != ClusterType::kNormal ||
            next->host_offset != entry->host_offset + (next_guest - guest + in_cluster)) {
          break;
        }
        Result<bool> next_in_place = CanWriteInPlace(next_guest, *next);
        if (!next_in_place.ok() || !*next_in_place ||
            !CheckHostCluster(next_guest, next->host_offset).ok() ||
            metadata_.Contains(next->host_offset / cluster_size_)) {
          break;
        }
        n += std::min(length - pos - n, cluster_size_);
      }
      status = CheckHostCluster(guest, entry->host_offset);
      if (status.ok() && metadata_.Contains(entry->host_offset / cluster_size_)) {
        status = Corrupt(guest, fmt::format("data cluster at host offset {:#x} overlaps image "
                                            "metadata",
                                            entry->host_offset));
      }
      if (status.ok()) {
        queue.Write(file_, entry->host_offset + in_cluster, SliceIovecs(iov, pos, n),
                    Tracker::Piece(tracker));
      }
    } else if (status.ok()) {
      status = WriteAllocating(guest, SliceIovecs(iov, pos, n), *entry);
    }
    if (!status.ok()) {
      tracker->Fail(std::move(status).error());
      break;
    }
    pos += n;
  }
  tracker->Finish(Ok());
}

Result<bool> Qcow2Backend::CanWriteInPlace(uint64_t guest_offset, const L2Entry& entry) {
  if (entry.type != ClusterType::kNormal) return false;
  if (entry.copied) return true;
  // Without the copied flag the cluster may be shared with an internal
  // snapshot; the refcount decides.
  ASSIGN_OR_RETURN(uint64_t refcount, refcounts_->Get(entry.host_offset / cluster_size_));
  if (refcount != 1) return false;
  TRY(SetL2Entry(guest_offset, entry.host_offset | qcow2::kFlagCopied));
  return true;
}

Status Qcow2Backend::WriteAllocating(uint64_t guest_offset, std::span<const iovec> data,
                                     const L2Entry& old) {
  const uint64_t guest_cluster = guest_offset & ~(cluster_size_ - 1);
  const uint64_t in_cluster = guest_offset - guest_cluster;
  const uint64_t length = IovecTotal(data);
  scratch_.resize(cluster_size_);
  if (length != cluster_size_) {
    // Copy-on-write: the new cluster starts as the cluster's current contents.
    TRY(ReadGuestCluster(guest_cluster, old, scratch_));
  }
  CopyFromIovecs(data, std::span(scratch_).subspan(in_cluster, length));

  TRY(PrepareL2ForWrite(guest_cluster));
  ASSIGN_OR_RETURN(uint64_t host, refcounts_->Allocate(1));
  TRY(file_.WriteAll(host, scratch_));
  TRY(SetL2Entry(guest_cluster, host | qcow2::kFlagCopied));
  ReleaseCluster(old);
  return Ok();
}

Result<uint64_t> Qcow2Backend::PrepareL2ForWrite(uint64_t guest_offset) {
  const uint64_t index = guest_offset >> (cluster_bits_ + cluster_bits_ - 3);
  ASSIGN_OR_RETURN(uint64_t table_offset, L2TableOffset(guest_offset));
  const uint64_t entry = l1_[index];
  if (table_offset != 0 && (entry & qcow2::kFlagCopied)) return table_offset;

  std::vector<uint64_t> entries(l2_entries_, 0);
  if (table_offset != 0) {
    ASSIGN_OR_RETURN(uint64_t refcount, refcounts_->Get(table_offset / cluster_size_));
    if (refcount == 1) {
      l1_[index] = entry | qcow2::kFlagCopied;
      l1_dirty_first_ = std::min(l1_dirty_first_, index);
      l1_dirty_end_ = std::max(l1_dirty_end_, index + 1);
      return table_offset;
    }
    // The table is shared with an internal snapshot: write a private copy.
    // The clusters it maps keep their refcounts, which count the L1 tables
    // that reach them.
    ASSIGN_OR_RETURN(qcow2::L2Cache::Table * shared, LoadL2Table(table_offset));
    entries = shared->entries;
    pending_frees_.emplace_back(table_offset / cluster_size_, true);
  }
  ASSIGN_OR_RETURN(uint64_t new_offset, refcounts_->Allocate(1));
  metadata_.Insert(new_offset / cluster_size_);
  if (l2_cache_.full()) TRY(EvictL2Table());
  l2_cache_.Insert(new_offset, std::move(entries), /*dirty=*/true);
  l1_[index] = new_offset | qcow2::kFlagCopied;
  l1_dirty_first_ = std::min(l1_dirty_first_, index);
  l1_dirty_end_ = std::max(l1_dirty_end_, index + 1);
  return new_offset;
}

Status Qcow2Backend::SetL2Entry(uint64_t guest_offset, uint64_t raw) {
  ASSIGN_OR_RETURN(uint64_t table_offset, PrepareL2ForWrite(guest_offset));
  ASSIGN_OR_RETURN(qcow2::L2Cache::Table * table, LoadL2Table(table_offset));
  table->entries[L2Index(guest_offset)] = raw;
  table->dirty = true;
  return Ok();
}

void Qcow2Backend::ReleaseCluster(const L2Entry& old) {
  switch (old.type) {
    case ClusterType::kNormal:
    case ClusterType::kZero:
      if (old.host_offset != 0) pending_frees_.emplace_back(old.host_offset / cluster_size_, false);
      return;
    case ClusterType::kCompressed: {
      // A compressed cluster holds one reference on each host cluster its
      // data touches.
      uint64_t first = old.host_offset / cluster_size_;
      uint64_t last = (old.host_offset + old.compressed_size - 1) / cluster_size_;
      for (uint64_t c = first; c <= last; ++c) pending_frees_.emplace_back(c, false);
      if (decompressed_entry_ == old.host_offset) decompressed_entry_ = UINT64_MAX;
      return;
    }
    case ClusterType::kUnallocated:
      return;
  }
}

Status Qcow2Backend::ChangeWholeCluster(uint64_t guest_cluster, bool zero_flag) {
  ASSIGN_OR_RETURN(L2Entry old, Lookup(guest_cluster));
  if (old.type == ClusterType::kUnallocated && !zero_flag) return Ok();
  if (old.type == ClusterType::kZero && old.host_offset == 0 && zero_flag) return Ok();
  TRY(SetL2Entry(guest_cluster, zero_flag ? qcow2::kFlagZero : 0));
  ReleaseCluster(old);
  return Ok();
}

Status Qcow2Backend::WriteZeroBytes(uint64_t offset, uint64_t length) {
  std::vector<uint8_t> zeros(length, 0);
  iovec iov{zeros.data(), zeros.size()};
  auto queue = IoQueue::CreateInline();
  Status result = Ok();
  StartWrite(*queue, offset, std::span(&iov, 1), [&result](Status s) { result = std::move(s); });
  return result;
}

Status Qcow2Backend::DoWriteZeroes(uint64_t offset, uint64_t length) {
  const bool has_backing = backing_ != nullptr;
  for (uint64_t pos = 0; pos < length;) {
    const uint64_t guest = offset + pos;
    const uint64_t in_cluster = guest & (cluster_size_ - 1);
    const uint64_t n = std::min(length - pos, cluster_size_ - in_cluster);
    // The last cluster of a disk whose size is not a cluster multiple counts
    // as whole when the range reaches the end of the disk.
    const bool whole = in_cluster == 0 && (n == cluster_size_ || guest + n == size_);
    if (whole && header_.version >= 3) {
      TRY(ChangeWholeCluster(guest, /*zero_flag=*/has_backing));
    } else if (whole && !has_backing) {
      TRY(ChangeWholeCluster(guest, /*zero_flag=*/false));  // unallocated reads as zeros
    } else {
      TRY(WriteZeroBytes(guest, n));
    }
    pos += n;
  }
  return Ok();
}

Status Qcow2Backend::DoDiscard(uint64_t offset, uint64_t length) {
  const bool has_backing = backing_ != nullptr;
  for (uint64_t pos = 0; pos < length;) {
    const uint64_t guest = offset + pos;
    const uint64_t in_cluster = guest & (cluster_size_ - 1);
    const uint64_t n = std::min(length - pos, cluster_size_ - in_cluster);
    const bool whole = in_cluster == 0 && (n == cluster_size_ || guest + n == size_);
    if (whole && !has_backing) {
      TRY(ChangeWholeCluster(guest, /*zero_flag=*/false));
    } else if (whole && header_.version >= 3) {
      // Read zeros, not stale data from the backing layer.
      TRY(ChangeWholeCluster(guest, /*zero_flag=*/true));
    }
    pos += n;
  }
  return Ok();
}

Status Qcow2Backend::Unallocate(uint64_t offset, uint64_t length) {
  if (read_only_) return Error(fmt::format("{}: the image is open read-only", path_));
  if (offset > size_ || length > size_ - offset) {
    return Error(fmt::format("{}: unallocating {} bytes at offset {:#x} is outside the disk",
                             path_, length, offset));
  }
  for (uint64_t pos = 0; pos < length;) {
    const uint64_t guest = offset + pos;
    const uint64_t in_cluster = guest & (cluster_size_ - 1);
    const uint64_t n = std::min(length - pos, cluster_size_ - in_cluster);
    if (in_cluster == 0 && (n == cluster_size_ || guest + n == size_)) {
      TRY(ChangeWholeCluster(guest, /*zero_flag=*/false));
    }
    pos += n;
  }
  return Ok();
}

Result<Extent> Qcow2Backend::DoGetExtent(uint64_t offset, uint64_t max_length) {
  ASSIGN_OR_RETURN(L2Entry first, Lookup(offset));
  const ExtentKind kind = KindOf(first);
  uint64_t length = std::min(max_length, cluster_size_ - (offset & (cluster_size_ - 1)));
  while (length < max_length) {
    Result<L2Entry> next = Lookup(offset + length);
    if (!next.ok() || KindOf(*next) != kind) break;
    length += std::min(max_length - length, cluster_size_);
  }
  return Extent{kind, length};
}

// ---- Write-back ----

Status Qcow2Backend::SyncBarrier() {
  TRY(file_.DataSync());
  if (refcounts_->has_unwritten_table_entries()) {
    TRY(refcounts_->WriteTableEntries());
    TRY(file_.DataSync());
  }
  return Ok();
}

Status Qcow2Backend::WriteL2Table(const qcow2::L2Cache::Table& table) {
  std::vector<uint8_t> raw(cluster_size_);
  for (size_t i = 0; i < table.entries.size(); ++i) {
    qcow2::StoreBe64(raw.data() + i * 8, table.entries[i]);
  }
  return file_.WriteAll(table.offset, raw);
}

Status Qcow2Backend::EvictL2Table() {
  std::optional<qcow2::L2Cache::Table> victim = l2_cache_.TakeVictim();
  if (!victim || !victim->dirty) return Ok();
  Status written = SyncBarrier();
  if (written.ok()) written = WriteL2Table(*victim);
  if (!written.ok()) {
    // Keep the changes, even though the cache is now one table over capacity.
    l2_cache_.Insert(victim->offset, std::move(victim->entries), true);
  }
  return written;
}

Status Qcow2Backend::FlushMetadata() {
  if (!refcounts_) return Ok();  // read-only
  std::vector<qcow2::L2Cache::Table*> dirty = l2_cache_.DirtyTables();
  const bool l1_dirty = l1_dirty_first_ < l1_dirty_end_;
  if (!dirty.empty() || l1_dirty || refcounts_->has_unwritten_table_entries()) {
    TRY(SyncBarrier());
    for (qcow2::L2Cache::Table* table : dirty) {
      TRY(WriteL2Table(*table));
      table->dirty = false;
    }
    if (l1_dirty) {
      TRY(file_.DataSync());
      std::vector<uint8_t> raw((l1_dirty_end_ - l1_dirty_first_) * 8);
      for (uint64_t i = l1_dirty_first_; i < l1_dirty_end_; ++i) {
        qcow2::StoreBe64(raw.data() + (i - l1_dirty_first_) * 8, l1_[i]);
      }
      TRY(file_.WriteAll(header_.l1_table_offset + l1_dirty_first_ * 8, raw));
      l1_dirty_first_ = UINT64_MAX;
      l1_dirty_end_ = 0;
    }
  }
  TRY(file_.DataSync());
  // A freed cluster can be allocated again at once; an asynchronous write
  // still in flight to it would then land in someone else's data.
  if (io_idle()) TRY(FreePendingClusters());
  return Ok();
}

Status Qcow2Backend::FreePendingClusters() {
  while (!pending_frees_.empty()) {
    auto [cluster, was_l2_table] = pending_frees_.back();
    TRY(refcounts_->Decrement(cluster));
    if (was_l2_table) {
      metadata_.Erase(cluster);
      l2_cache_.Erase(cluster * cluster_size_);
    }
    pending_frees_.pop_back();
  }
  return Ok();
}

void Qcow2Backend::StartFlush(IoQueue& queue, IoCallback done) {
  // NOTE: the metadata write-back and its fdatasync calls block the calling
  // thread, also in the asynchronous API.
  queue.Complete(std::move(done), FlushMetadata());
}

Status Qcow2Backend::DoReopenReadOnly() {
  TRY(FreePendingClusters());
  TRY(file_.DataSync());
  ASSIGN_OR_RETURN(ImageFile reopened, file_.ReopenReadOnly());
  ASSIGN_OR_RETURN(file_size_, reopened.Size());
  file_ = std::move(reopened);
  refcounts_.reset();
  metadata_.Clear();
  return Ok();
}

}  // namespace forkvmm::block
