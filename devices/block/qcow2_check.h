// Consistency check and repair of qcow2 metadata.
//
// The check walks every structure that references host clusters: header,
// active and snapshot L1/L2 tables, data and compressed clusters, refcount
// table and blocks, snapshot table, bitmap directory and tables. It counts
// the references to each host cluster and compares them with the stored
// refcounts:
//   refcount < references   corruption (a write could reuse a cluster in use)
//   refcount > references   leak (space lost, data safe)
// It also counts as corruptions the table entries that are invalid
// (reserved bits, misaligned or outside the file) and copied flags that
// disagree with a refcount of 1. Tables that extend past the end of the
// file are corruptions too, and the part past the end reads as zeros, as
// in QEMU.
//
// Repair: kLeaks lowers leaked refcounts; kAll also raises refcounts that
// are too low, rebuilding the refcount table and blocks at the end of the
// file when they are missing or unusable, fixes copied flags, and clears L1
// entries that have flags or reserved bits but no L2 table offset. Other
// invalid entries and tables past the end of the file are reported, not
// repaired, so the image stays corrupt after kAll.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "devices/block/image_file.h"
#include "devices/block/qcow2_format.h"
#include "vmm/base/result.h"

namespace forkvmm::block::qcow2 {

enum class RepairMode { kNone, kLeaks, kAll };

struct CheckReport {
  uint64_t corruptions = 0;
  uint64_t leaks = 0;
  // Problems that stopped part of the walk (an unreadable table).
  uint64_t check_errors = 0;
  uint64_t corruptions_fixed = 0;
  uint64_t leaks_fixed = 0;
  // Statistics of the active L1 table, in guest clusters.
  uint64_t total_clusters = 0;
  uint64_t allocated_clusters = 0;
  uint64_t fragmented_clusters = 0;
  uint64_t compressed_clusters = 0;
  // One past the last byte of the last referenced host cluster.
  uint64_t image_end_offset = 0;
  // One line per problem found (the first kMaxCheckMessages of them).
  std::vector<std::string> messages;
  uint64_t messages_dropped = 0;
};

inline constexpr size_t kMaxCheckMessages = 1000;

// Checks the image at `path`, which is opened read-write when repairing.
// After a repair the image is checked again, so the report describes the
// image as the repair left it, and the *_fixed counts give what changed.
// Fails without a report when the header cannot be parsed or the file
// cannot be read.
Result<CheckReport> CheckImage(const std::string& path, RepairMode mode);

// Rebuilds the refcounts of a dirty image about to be opened read-write,
// then clears the dirty bit. Fails if corruptions remain.
Status RepairRefcountsForOpen(ImageFile& file, Header& header);

}  // namespace forkvmm::block::qcow2
