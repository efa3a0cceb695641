/* RAM ranges from the boot memory map, normalized, and the free part of them. */
#include "runtime.h"

#define PAGE_SIZE 4096u

size_t rt_ram_ranges(struct rt_ram_range* out, size_t capacity) {
  struct rt_ram_range sorted[RT_MAX_RAM_RANGES];
  size_t count = 0;
  for (uint32_t i = 0; i < rt_boot_info.ram_range_count; ++i) {
    struct rt_ram_range range = rt_boot_info.ram[i];
    if (range.end <= range.start) continue;
    size_t position = count++;
    while (position > 0 && sorted[position - 1].start > range.start) {
      sorted[position] = sorted[position - 1];
      --position;
    }
    sorted[position] = range;
  }
  /* Merge overlapping and adjacent ranges. */
  size_t merged = 0;
  for (size_t i = 0; i < count; ++i) {
    if (merged > 0 && sorted[i].start <= out[merged - 1].end) {
      if (sorted[i].end > out[merged - 1].end) out[merged - 1].end = sorted[i].end;
    } else if (merged < capacity) {
      out[merged++] = sorted[i];
    }
  }
  return merged;
}

uint64_t rt_ram_bytes(void) {
  struct rt_ram_range ranges[RT_MAX_RAM_RANGES];
  size_t count = rt_ram_ranges(ranges, RT_MAX_RAM_RANGES);
  uint64_t total = 0;
  for (size_t i = 0; i < count; ++i) total += ranges[i].end - ranges[i].start;
  return total;
}

/* Removes [start, end) from the sorted ranges in place. A range that splits
 * in two needs a free slot, and without one its upper part is dropped. */
static size_t subtract(struct rt_ram_range* ranges, size_t count, size_t capacity, uint64_t start,
                       uint64_t end) {
  for (size_t i = 0; i < count; ++i) {
    struct rt_ram_range range = ranges[i];
    if (end <= range.start || start >= range.end) continue;
    bool keep_low = range.start < start;
    bool keep_high = range.end > end;
    if (keep_low && keep_high) {
      if (count == capacity) {
        ranges[i].end = start;
        continue;
      }
      for (size_t j = count; j > i + 1; --j) ranges[j] = ranges[j - 1];
      ranges[i].end = start;
      ranges[i + 1].start = end;
      ranges[i + 1].end = range.end;
      ++count;
      ++i;
    } else if (keep_low) {
      ranges[i].end = start;
    } else if (keep_high) {
      ranges[i].start = end;
    } else {
      for (size_t j = i; j + 1 < count; ++j) ranges[j] = ranges[j + 1];
      --count;
      --i;
    }
  }
  return count;
}

size_t rt_free_ranges(struct rt_ram_range* out, size_t capacity) {
  size_t count = rt_ram_ranges(out, capacity);
  count = subtract(out, count, capacity, 0, PAGE_SIZE);
  count = subtract(out, count, capacity, rt_boot_info.image_start, rt_boot_info.image_end);
  if (rt_boot_info.trampoline_installed) {
    count = subtract(out, count, capacity, RT_TRAMPOLINE_ADDRESS, RT_TRAMPOLINE_ADDRESS + PAGE_SIZE);
  }
  return count;
}
