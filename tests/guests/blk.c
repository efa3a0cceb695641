/*
 * blk: drives virtio-blk disk 0 through the ring-3 driver (virtio_blk.h),
 * in one of two modes chosen on the command line.
 *
 * Self-test (the default): writes patterns to sector 0, sectors 1-8 and the
 * last sector and reads them back, checks that reads starting at and
 * crossing the end fail with IOERR, and flushes. The disk's contents there
 * are overwritten. Output:
 *   blk: disk 0: <N> sectors, writable, id '<id>'
 *   blk: PASS: sectors 0, 1-8 and <N-1> read back as written, reads past the end failed with IOERR, flush succeeded
 *
 * Benchmark ("blk.bench=1"): sequential writes, then reads with every word
 * checked, of the first blk.seq_mib MiB (default 16) in blk.request_kib KiB
 * requests (default 128). Then blk.ops (default 1000) random 4 KiB writes
 * and as many random 4 KiB reads, 4 KiB-aligned within the first
 * blk.span_mib MiB (default 0: the whole disk). blk.depth (default 1)
 * requests are kept in flight, and blk.seed (default 1) seeds the random
 * offsets and the data pattern. Elapsed times are kvmclock nanoseconds of
 * the guest. Output:
 *   blk: bench: depth D, request R bytes, seed S, disk N sectors
 *   blk: bench <phase>: <requests> requests, <bytes> bytes, <ns> ns
 *     (phases sequential-write, sequential-read, random-write, random-read;
 *      sequential-read adds ", <M> mismatched words")
 *   blk: bench done
 *
 * Failures print "blk: FAIL: <reason>" and exit with code 1.
 */
#include "virtio_blk.h"

const char rt_guest_name[] = "blk";

#define KIB UINT64_C(1024)
#define MIB (KIB * KIB)
#define RANDOM_BYTES 4096u
#define MAX_REQUEST_KIB 1024u
#define WAIT_NS UINT64_C(5000000000)

static struct rt_blk disk;
static uint8_t sector_buffer[8 * RT_BLK_SECTOR_BYTES] __attribute__((aligned(4096)));

static const char* status_name(int status) {
  switch (status) {
    case RT_BLK_S_OK: return "OK";
    case RT_BLK_S_IOERR: return "IOERR";
    case RT_BLK_S_UNSUPP: return "UNSUPP";
    case RT_BLK_ERROR_BUSY: return "driver busy";
    case RT_BLK_ERROR_INVALID: return "invalid request";
    case RT_BLK_ERROR_TIMEOUT: return "timed out";
    case RT_BLK_ERROR_DEVICE: return "device protocol error";
    default: return "unknown status";
  }
}

static void fill_words(void* buffer, uint32_t bytes, uint64_t first_word) {
  uint64_t* words = buffer;
  for (uint32_t i = 0; i < bytes / 8; ++i) words[i] = first_word + i;
}

/* Returns the number of words that differ from fill_words' pattern. */
static uint64_t count_mismatches(const void* buffer, uint32_t bytes, uint64_t first_word) {
  const uint64_t* words = buffer;
  uint64_t mismatches = 0;
  for (uint32_t i = 0; i < bytes / 8; ++i) mismatches += words[i] != first_word + i;
  return mismatches;
}

static void expect_status(int status, int expected, const char* what, uint64_t sector) {
  if (status != expected) {
    rt_fail("%s at sector %lu: status %s, expected %s", what, sector, status_name(status),
            status_name(expected));
  }
}

/* Writes `sectors` sectors from `sector` with a pattern unique to that
 * sector and reads them back. */
static void write_and_check(uint64_t sector, uint32_t sectors) {
  uint32_t bytes = sectors * RT_BLK_SECTOR_BYTES;
  uint64_t first_word = UINT64_C(0x5eed000000000000) + sector * 64;
  fill_words(sector_buffer, bytes, first_word);
  expect_status(rt_blk_transfer(&disk, RT_BLK_T_OUT, sector, sector_buffer, bytes), RT_BLK_S_OK,
                "write", sector);
  memset(sector_buffer, 0, bytes);
  expect_status(rt_blk_transfer(&disk, RT_BLK_T_IN, sector, sector_buffer, bytes), RT_BLK_S_OK,
                "read", sector);
  uint64_t mismatches = count_mismatches(sector_buffer, bytes, first_word);
  if (mismatches != 0) rt_fail("sector %lu read back with %lu wrong words", sector, mismatches);
}

static void self_test(void) {
  char id[RT_BLK_ID_BYTES + 1] __attribute__((aligned(8))) = {0};
  expect_status(rt_blk_transfer(&disk, RT_BLK_T_GET_ID, 0, id, RT_BLK_ID_BYTES), RT_BLK_S_OK,
                "get-id", 0);
  rt_printf("blk: disk 0: %lu sectors, %s, id '%s'\n", disk.capacity,
            rt_blk_read_only(&disk) ? "read-only" : "writable", id);
  if (rt_blk_read_only(&disk)) rt_fail("the self-test needs a writable disk");
  if (disk.capacity < 16) rt_fail("the self-test needs at least 16 sectors");
  if (!((disk.features >> RT_BLK_F_FLUSH) & 1)) rt_fail("the device does not offer flush");

  write_and_check(0, 1);
  write_and_check(1, 8);
  write_and_check(disk.capacity - 1, 1);
  expect_status(rt_blk_transfer(&disk, RT_BLK_T_IN, disk.capacity, sector_buffer,
                                RT_BLK_SECTOR_BYTES),
                RT_BLK_S_IOERR, "read one past the end", disk.capacity);
  expect_status(rt_blk_transfer(&disk, RT_BLK_T_IN, disk.capacity - 1, sector_buffer,
                                2 * RT_BLK_SECTOR_BYTES),
                RT_BLK_S_IOERR, "read across the end", disk.capacity - 1);
  expect_status(rt_blk_transfer(&disk, RT_BLK_T_FLUSH, 0, 0, 0), RT_BLK_S_OK, "flush", 0);
  rt_printf("blk: PASS: sectors 0, 1-8 and %lu read back as written, reads past the end failed "
            "with IOERR, flush succeeded\n",
            disk.capacity - 1);
}

/* --- benchmark --- */

struct bench {
  uint32_t depth;
  uint32_t request_bytes;
  uint64_t seed;
  uint8_t* buffers; /* depth buffers of request_bytes each */
  uint64_t random_state;
  uint64_t span_blocks; /* 4 KiB blocks that random requests fall in */
};

/* One phase: `requests` requests of `bytes` bytes each, at the sectors
 * that phase_sector() picks. */
struct phase {
  const char* name;
  uint32_t type;
  uint64_t requests;
  uint32_t bytes;
  bool sequential;
  uint64_t mismatches;
};

/* xorshift64 (Marsaglia, "Xorshift RNGs", 2003). */
static uint64_t next_random(struct bench* bench) {
  uint64_t x = bench->random_state;
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  bench->random_state = x;
  return x;
}

static uint64_t phase_sector(struct bench* bench, const struct phase* phase, uint64_t index) {
  if (phase->sequential) return index * (phase->bytes / RT_BLK_SECTOR_BYTES);
  return next_random(bench) % bench->span_blocks * (RANDOM_BYTES / RT_BLK_SECTOR_BYTES);
}

/* The first pattern word of `sector`, for the sequential phases. Words
 * count up from there, across sector boundaries. */
static uint64_t pattern_word(const struct bench* bench, uint64_t sector) {
  return bench->seed * UINT64_C(0x9e3779b97f4a7c15) + sector * (RT_BLK_SECTOR_BYTES / 8);
}

static uint8_t* buffer_at(const struct bench* bench, uint32_t index) {
  return bench->buffers + (uint64_t)index * bench->request_bytes;
}

static void finish_request(struct bench* bench, struct phase* phase, uint32_t buffer,
                           uint64_t sector, int status) {
  if (status != RT_BLK_S_OK) rt_fail("%s at sector %lu: %s", phase->name, sector, status_name(status));
  if (phase->sequential && phase->type == RT_BLK_T_IN) {
    phase->mismatches +=
        count_mismatches(buffer_at(bench, buffer), phase->bytes, pattern_word(bench, sector));
  }
}

static void run_phase(struct bench* bench, struct phase* phase) {
  uint32_t buffer_of_tag[RT_BLK_MAX_REQUESTS];
  uint64_t sector_of_tag[RT_BLK_MAX_REQUESTS];
  bool buffer_busy[RT_BLK_MAX_REQUESTS] = {false};
  uint64_t submitted = 0, completed = 0;
  uint64_t start = rt_now_ns();
  while (completed < phase->requests) {
    if (submitted < phase->requests && disk.in_flight < bench->depth) {
      uint32_t buffer = 0;
      while (buffer_busy[buffer]) ++buffer;
      uint64_t sector = phase_sector(bench, phase, submitted);
      if (phase->sequential && phase->type == RT_BLK_T_OUT) {
        fill_words(buffer_at(bench, buffer), phase->bytes, pattern_word(bench, sector));
      }
      int tag = rt_blk_submit(&disk, phase->type, sector, buffer_at(bench, buffer), phase->bytes);
      if (tag < 0) rt_fail("%s: submitting request %lu: %s", phase->name, submitted, status_name(tag));
      buffer_busy[buffer] = true;
      buffer_of_tag[tag] = buffer;
      sector_of_tag[tag] = sector;
      ++submitted;
      continue;
    }
    struct rt_blk_completion done;
    if (rt_blk_wait(&disk, &done, WAIT_NS) != 0) rt_fail("%s: no completion within 5 s", phase->name);
    if (done.tag < 0) rt_fail("%s: %s", phase->name, status_name(done.status));
    buffer_busy[buffer_of_tag[done.tag]] = false;
    finish_request(bench, phase, buffer_of_tag[done.tag], sector_of_tag[done.tag], done.status);
    ++completed;
  }
  uint64_t elapsed = rt_now_ns() - start;
  uint64_t bytes = phase->requests * phase->bytes;
  if (phase->sequential && phase->type == RT_BLK_T_IN) {
    rt_printf("blk: bench %s: %lu requests, %lu bytes, %lu ns, %lu mismatched words\n",
              phase->name, phase->requests, bytes, elapsed, phase->mismatches);
  } else {
    rt_printf("blk: bench %s: %lu requests, %lu bytes, %lu ns\n", phase->name, phase->requests,
              bytes, elapsed);
  }
}

/* Returns the start of `bytes` of free RAM, 4 KiB-aligned, or fails. */
static uint8_t* reserve_ram(uint64_t bytes) {
  struct rt_ram_range ranges[RT_MAX_RAM_RANGES];
  size_t count = rt_free_ranges(ranges, RT_MAX_RAM_RANGES);
  for (size_t i = 0; i < count; ++i) {
    uint64_t start = (ranges[i].start + 4095) & ~UINT64_C(4095);
    if (start < ranges[i].end && ranges[i].end - start >= bytes) return (uint8_t*)start;
  }
  rt_fail("no free RAM range holds %lu bytes of buffers", bytes);
}

static void benchmark(void) {
  struct bench bench = {0};
  bench.depth = (uint32_t)rt_command_line_value("blk.depth", 1);
  uint64_t request_kib = rt_command_line_value("blk.request_kib", 128);
  uint64_t sequential_bytes = rt_command_line_value("blk.seq_mib", 16) * MIB;
  uint64_t random_requests = rt_command_line_value("blk.ops", 1000);
  uint64_t span_bytes = rt_command_line_value("blk.span_mib", 0) * MIB;
  bench.seed = rt_command_line_value("blk.seed", 1);
  if (bench.depth < 1 || bench.depth > disk.requests) {
    rt_fail("blk.depth=%u is outside 1 to %u", bench.depth, disk.requests);
  }
  if (request_kib < 4 || request_kib > MAX_REQUEST_KIB || request_kib % 4 != 0) {
    rt_fail("blk.request_kib=%lu is not a multiple of 4 from 4 to %u", request_kib,
            MAX_REQUEST_KIB);
  }
  bench.request_bytes = (uint32_t)(request_kib * KIB);
  uint64_t disk_bytes = disk.capacity * RT_BLK_SECTOR_BYTES;
  if (span_bytes == 0 || span_bytes > disk_bytes) span_bytes = disk_bytes;
  if (sequential_bytes > disk_bytes) rt_fail("blk.seq_mib is larger than the disk");
  bench.span_blocks = span_bytes / RANDOM_BYTES;
  if (bench.span_blocks == 0) rt_fail("the disk is smaller than 4 KiB");
  if (rt_blk_read_only(&disk)) rt_fail("the benchmark needs a writable disk");
  bench.random_state = bench.seed == 0 ? 1 : bench.seed;
  bench.buffers = reserve_ram((uint64_t)bench.depth * bench.request_bytes);
  rt_printf("blk: bench: depth %u, request %u bytes, seed %lu, disk %lu sectors\n", bench.depth,
            bench.request_bytes, bench.seed, disk.capacity);

  struct phase phases[] = {
      {"sequential-write", RT_BLK_T_OUT, sequential_bytes / bench.request_bytes,
       bench.request_bytes, true, 0},
      {"sequential-read", RT_BLK_T_IN, sequential_bytes / bench.request_bytes,
       bench.request_bytes, true, 0},
      {"random-write", RT_BLK_T_OUT, random_requests, RANDOM_BYTES, false, 0},
      {"random-read", RT_BLK_T_IN, random_requests, RANDOM_BYTES, false, 0},
  };
  fill_words(bench.buffers, (uint32_t)bench.depth * bench.request_bytes, bench.seed);
  for (size_t i = 0; i < sizeof(phases) / sizeof(phases[0]); ++i) run_phase(&bench, &phases[i]);
  if (phases[1].mismatches != 0) rt_fail("sequential reads returned %lu wrong words", phases[1].mismatches);
  rt_printf("blk: bench done\n");
}

int main(void) {
  if (!rt_clock_available()) {
    rt_printf("blk: UNSUPPORTED: kvmclock is not available\n");
    return RT_EXIT_UNSUPPORTED;
  }
  const char* error = rt_blk_init(&disk, 0);
  if (error != 0) rt_fail("virtio-blk disk 0: %s", error);
  if (rt_command_line_value("blk.bench", 0) != 0) {
    benchmark();
  } else {
    self_test();
  }
  return RT_EXIT_PASS;
}
