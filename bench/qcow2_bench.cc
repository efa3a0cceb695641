// Micro-benchmarks of the qcow2 backend: cluster lookup, reads of
// allocated clusters, allocating and copy-on-write writes, and io_uring
// submission. Images live in $TMPDIR (default /tmp), so the numbers include
// that file system's page cache, not a disk.
#include <benchmark/benchmark.h>
#include <stdlib.h>

#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "devices/block/image.h"

namespace forkvmm::block {
namespace {

// A scratch directory removed when the benchmark ends.
class ScratchDir {
 public:
  ScratchDir() {
    const char* base = getenv("TMPDIR");
    std::string pattern = std::string(base != nullptr ? base : "/tmp") + "/qcow2-bench-XXXXXX";
    path_ = mkdtemp(pattern.data()) != nullptr ? pattern : "/tmp";
  }
  ~ScratchDir() {
    std::error_code ignored;
    if (path_ != "/tmp") std::filesystem::remove_all(path_, ignored);
  }
  std::string File(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

std::unique_ptr<BlockBackend> MakeImage(const std::string& path, uint64_t size,
                                        uint64_t cluster_size, uint64_t prefill) {
  Status created = CreateImage(path, {.size = size, .cluster_size = cluster_size});
  if (!created.ok()) return nullptr;
  auto disk = OpenImage(path, ImageFormat::kQcow2);
  if (!disk.ok()) return nullptr;
  std::vector<uint8_t> chunk(1 << 20, 0x5a);
  for (uint64_t offset = 0; offset < prefill; offset += chunk.size()) {
    if (!(*disk)->Write(offset, chunk).ok()) return nullptr;
  }
  return std::move(disk).value();
}

// Cluster lookup only: GetExtent walks L1 and the cached L2 table, no data I/O.
void BM_Qcow2Lookup(benchmark::State& state) {
  const uint64_t cluster = static_cast<uint64_t>(state.range(0));
  ScratchDir dir;
  const uint64_t filled = 64 << 20;
  auto disk = MakeImage(dir.File("a.qcow2"), 1ull << 30, cluster, filled);
  if (!disk) return state.SkipWithError("cannot create the image");
  std::mt19937_64 rng(1);
  for (auto _ : state) {
    uint64_t offset = (rng() % (filled / cluster)) * cluster;
    auto extent = disk->GetExtent(offset, cluster);
    benchmark::DoNotOptimize(extent);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_Qcow2Lookup)->Arg(4096)->Arg(65536)->Arg(2 << 20);

// 4 KiB synchronous reads of allocated clusters (lookup plus preadv).
void BM_Qcow2Read4K(benchmark::State& state) {
  ScratchDir dir;
  const uint64_t filled = 64 << 20;
  auto disk = MakeImage(dir.File("a.qcow2"), 1ull << 30, 65536, filled);
  if (!disk) return state.SkipWithError("cannot create the image");
  std::vector<uint8_t> buffer(4096);
  std::mt19937_64 rng(2);
  for (auto _ : state) {
    uint64_t offset = (rng() % (filled / 4096)) * 4096;
    if (!disk->Read(offset, buffer).ok()) return state.SkipWithError("read failed");
  }
  state.SetBytesProcessed(state.iterations() * 4096);
}
BENCHMARK(BM_Qcow2Read4K);

// Whole-cluster writes to unallocated clusters: refcount update, data write,
// L2 update (written back on flush, outside the timed loop).
void BM_Qcow2AllocatingWrite(benchmark::State& state) {
  const uint64_t cluster = static_cast<uint64_t>(state.range(0));
  ScratchDir dir;
  const uint64_t size = 64ull << 30;
  auto disk = MakeImage(dir.File("a.qcow2"), size, cluster, 0);
  if (!disk) return state.SkipWithError("cannot create the image");
  std::vector<uint8_t> data(cluster, 0xa5);
  uint64_t next = 0;
  for (auto _ : state) {
    if (!disk->Write(next, data).ok()) return state.SkipWithError("write failed");
    next = (next + cluster) % size;
  }
  (void)disk->Flush();  // after the timed loop
  state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(cluster));
}
BENCHMARK(BM_Qcow2AllocatingWrite)->Arg(4096)->Arg(65536);

// 4 KiB writes into unallocated 64 KiB clusters over a raw backing file:
// each copies the rest of the cluster from the backing file.
void BM_Qcow2CopyOnWrite4K(benchmark::State& state) {
  ScratchDir dir;
  const uint64_t size = 1ull << 30;
  if (!CreateImage(dir.File("base.raw"), {.format = ImageFormat::kRaw, .size = size}).ok()) {
    return state.SkipWithError("cannot create the backing file");
  }
  if (!CreateImage(dir.File("top.qcow2"),
                   {.backing_file = "base.raw", .backing_format = ImageFormat::kRaw})
           .ok()) {
    return state.SkipWithError("cannot create the overlay");
  }
  auto disk = OpenImage(dir.File("top.qcow2"), ImageFormat::kQcow2).value();
  std::vector<uint8_t> data(4096, 0x3c);
  uint64_t next = 0;
  for (auto _ : state) {
    if (!disk->Write(next + 8192, data).ok()) return state.SkipWithError("write failed");
    next = (next + 65536) % size;
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_Qcow2CopyOnWrite4K);

// Asynchronous 4 KiB reads through io_uring, `range(0)` in flight at a time:
// submission, completion reaping and callback cost per request.
void RunAsyncReads(benchmark::State& state, BlockBackend& disk, uint64_t span) {
  const int depth = static_cast<int>(state.range(0));
  if (!disk.StartAsync(static_cast<unsigned>(depth)).ok()) {
    return state.SkipWithError("io_uring setup failed");
  }
  std::vector<std::vector<uint8_t>> buffers(depth, std::vector<uint8_t>(4096));
  std::mt19937_64 rng(3);
  int64_t completed = 0;
  for (auto _ : state) {
    for (int i = 0; i < depth; ++i) {
      uint64_t offset = (rng() % (span / 4096)) * 4096;
      disk.Submit({.op = BlockOp::kRead, .offset = offset,
                   .iov = {{buffers[i].data(), 4096}},
                   .done = [&completed](Status) { ++completed; }});
    }
    if (!disk.Drain().ok()) return state.SkipWithError("drain failed");
  }
  state.SetItemsProcessed(completed);
}

void BM_IoUringRawRead4K(benchmark::State& state) {
  ScratchDir dir;
  const uint64_t size = 64 << 20;
  if (!CreateImage(dir.File("a.raw"), {.format = ImageFormat::kRaw, .size = size}).ok()) {
    return state.SkipWithError("cannot create the image");
  }
  auto disk = OpenImage(dir.File("a.raw"), ImageFormat::kRaw).value();
  std::vector<uint8_t> fill(size, 1);
  (void)disk->Write(0, fill);  // real pages, not a hole
  RunAsyncReads(state, *disk, size);
}
BENCHMARK(BM_IoUringRawRead4K)->Arg(1)->Arg(32);

void BM_IoUringQcow2Read4K(benchmark::State& state) {
  ScratchDir dir;
  const uint64_t filled = 64 << 20;
  auto disk = MakeImage(dir.File("a.qcow2"), 1ull << 30, 65536, filled);
  if (!disk) return state.SkipWithError("cannot create the image");
  RunAsyncReads(state, *disk, filled);
}
BENCHMARK(BM_IoUringQcow2Read4K)->Arg(1)->Arg(32);

}  // namespace
}  // namespace forkvmm::block

BENCHMARK_MAIN();
