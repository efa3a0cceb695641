// A set of host cluster indexes, stored as a bitmap that grows on demand.
//
// Tracks which clusters of an open qcow2 image hold metadata (header,
// tables, refcount blocks), so a corrupt or hostile image cannot make the
// allocator or a guest write land on them. Costs one bit per host cluster.
#pragma once

#include <cstdint>
#include <vector>

namespace forkvmm::block::qcow2 {

class ClusterSet {
 public:
  void Insert(uint64_t cluster) {
    if (cluster / 64 >= words_.size()) words_.resize(cluster / 64 + 1, 0);
    words_[cluster / 64] |= uint64_t{1} << (cluster % 64);
  }
  void InsertRange(uint64_t first, uint64_t count) {
    for (uint64_t i = 0; i < count; ++i) Insert(first + i);
  }
  void Erase(uint64_t cluster) {
    if (cluster / 64 < words_.size()) words_[cluster / 64] &= ~(uint64_t{1} << (cluster % 64));
  }
  bool Contains(uint64_t cluster) const {
    return cluster / 64 < words_.size() && (words_[cluster / 64] >> (cluster % 64)) & 1;
  }
  void Clear() { words_.clear(); }

 private:
  std::vector<uint64_t> words_;
};

}  // namespace forkvmm::block::qcow2
