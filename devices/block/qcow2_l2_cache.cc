#include "devices/block/qcow2_l2_cache.h"

namespace forkvmm::block::qcow2 {

L2Cache::Table* L2Cache::Find(uint64_t offset) {
  auto it = index_.find(offset);
  if (it == index_.end()) return nullptr;
  Table& table = slots_[it->second];
  table.last_use = ++clock_;
  return &table;
}

std::optional<L2Cache::Table> L2Cache::TakeVictim() {
  if (index_.empty()) return std::nullopt;
  size_t victim = 0;
  uint64_t oldest = UINT64_MAX;
  for (const auto& [offset, slot] : index_) {
    if (slots_[slot].last_use < oldest) {
      oldest = slots_[slot].last_use;
      victim = slot;
    }
  }
  Table taken = std::move(slots_[victim]);
  index_.erase(taken.offset);
  free_slots_.push_back(victim);
  return taken;
}

L2Cache::Table* L2Cache::Insert(uint64_t offset, std::vector<uint64_t> entries, bool dirty) {
  size_t slot;
  if (!free_slots_.empty()) {
    slot = free_slots_.back();
    free_slots_.pop_back();
  } else {
    slot = slots_.size();
    slots_.emplace_back();
  }
  slots_[slot] = Table{offset, std::move(entries), dirty, ++clock_};
  index_[offset] = slot;
  return &slots_[slot];
}

void L2Cache::Erase(uint64_t offset) {
  auto it = index_.find(offset);
  if (it == index_.end()) return;
  slots_[it->second] = Table{};
  free_slots_.push_back(it->second);
  index_.erase(it);
}

std::vector<L2Cache::Table*> L2Cache::DirtyTables() {
  std::vector<Table*> dirty;
  for (const auto& [offset, slot] : index_) {
    if (slots_[slot].dirty) dirty.push_back(&slots_[slot]);
  }
  return dirty;
}

}  // namespace forkvmm::block::qcow2
