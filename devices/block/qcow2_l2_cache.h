// A bounded cache of qcow2 L2 tables, least recently used first out.
//
// Tables are held in host byte order. A dirty table has changes not yet
// written to the file; the owner writes it back before it is evicted (see
// TakeVictim) and on flush. Not thread-safe.
#pragma once

#include <cstdint>
#include <optional>
#include <unordered_map>
#include <vector>

namespace forkvmm::block::qcow2 {

class L2Cache {
 public:
  struct Table {
    uint64_t offset = 0;  // host offset of the table in the image
    std::vector<uint64_t> entries;
    bool dirty = false;
    uint64_t last_use = 0;
  };

  L2Cache(size_t capacity, size_t entries_per_table)
      : capacity_(capacity < 1 ? 1 : capacity), entries_per_table_(entries_per_table) {}

  // Returns the table at `offset`, or nullptr when it is not cached. The
  // pointer is valid until the next Insert or TakeVictim.
  Table* Find(uint64_t offset);
  // True when inserting one more table needs an eviction first.
  bool full() const { return index_.size() >= capacity_; }
  // Removes the least recently used table and returns it (dirty or not).
  std::optional<Table> TakeVictim();
  // Adds a table; the cache must not be full and must not hold `offset`.
  Table* Insert(uint64_t offset, std::vector<uint64_t> entries, bool dirty);
  // Drops the table at `offset` if cached (for a freed cluster).
  void Erase(uint64_t offset);
  // Tables with unwritten changes.
  std::vector<Table*> DirtyTables();
  size_t entries_per_table() const { return entries_per_table_; }
  size_t capacity() const { return capacity_; }

 private:
  size_t capacity_;
  size_t entries_per_table_;
  uint64_t clock_ = 0;
  std::vector<Table> slots_;
  std::unordered_map<uint64_t, size_t> index_;  // table offset -> slot
  std::vector<size_t> free_slots_;
};

}  // namespace forkvmm::block::qcow2
