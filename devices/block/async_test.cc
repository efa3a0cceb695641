// The asynchronous path: IoUring, IoQueue and BlockBackend::Submit/Poll.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>

#include "devices/block/image.h"
#include "devices/block/io_queue.h"
#include "devices/block/io_uring.h"
#include "devices/block/test_support.h"

namespace forkvmm::block {
namespace {

using testing::RandomBytes;
using testing::TempDir;

TEST(IoUringTest, RingFdIsCloseOnExec) {
  Result<IoUring> ring = IoUring::Create(8);
  ASSERT_TRUE(ring.ok()) << ring.error().message();
  int flags = fcntl(ring->fd(), F_GETFD);
  EXPECT_NE(flags & FD_CLOEXEC, 0);
}

TEST(IoQueueTest, ReadsPastEndOfFileAsZeros) {
  TempDir dir;
  testing::WriteFileBytes(dir.File("f"), std::vector<uint8_t>(100, 0x11));
  ASSERT_TRUE(ImageFile::Open(dir.File("f"), false).ok());
  ImageFile file = ImageFile::Open(dir.File("f"), false).value();
  auto queue = IoQueue::Create(4).value();
  ASSERT_EQ(queue->mode(), IoQueue::Mode::kRing);
  std::vector<uint8_t> out(300, 0xff);
  iovec iov{out.data(), out.size()};
  bool called = false;
  queue->Read(file, 50, std::span(&iov, 1), [&](Status s) {
    EXPECT_TRUE(s.ok());
    called = true;
  });
  ASSERT_TRUE(queue->SubmitPrepared().ok());
  EXPECT_FALSE(called);  // callbacks run from Poll, not from the call
  ASSERT_TRUE(queue->Drain().ok());
  EXPECT_TRUE(called);
  EXPECT_EQ(std::count(out.begin(), out.begin() + 50, 0x11), 50);
  EXPECT_EQ(std::count(out.begin() + 50, out.end(), 0), 250);
}

TEST(IoQueueTest, MoreOperationsThanRingEntries) {
  TempDir dir;
  ImageFile file = ImageFile::Create(dir.File("f"), ImageFile::CreateMode::kTruncate).value();
  auto queue = IoQueue::Create(4).value();
  std::vector<std::vector<uint8_t>> blocks;
  int completed = 0;
  for (int i = 0; i < 200; ++i) blocks.push_back(RandomBytes(4096, i));
  std::vector<iovec> iovs;
  for (auto& b : blocks) iovs.push_back({b.data(), b.size()});
  for (int i = 0; i < 200; ++i) {
    queue->Write(file, uint64_t(i) * 4096, std::span(&iovs[i], 1), [&](Status s) {
      EXPECT_TRUE(s.ok()) << s.error().message();
      ++completed;
    });
  }
  EXPECT_EQ(queue->in_flight(), 200u);
  ASSERT_TRUE(queue->Drain().ok());
  EXPECT_EQ(completed, 200);
  std::vector<uint8_t> all = testing::ReadFileBytes(dir.File("f"));
  ASSERT_EQ(all.size(), 200u * 4096);
  for (int i = 0; i < 200; ++i) {
    ASSERT_TRUE(std::equal(blocks[i].begin(), blocks[i].end(), all.begin() + i * 4096)) << i;
  }
}

// Waits on the completion eventfd and runs Poll until `done()` is true, as
// a device's event loop does. Gives up after 10 s without progress.
void PollUntil(BlockBackend& disk, int event_fd, const std::function<bool()>& done) {
  int idle_rounds = 0;
  while (!done() && idle_rounds < 100) {
    pollfd pfd{event_fd, POLLIN, 0};
    int ready = ::poll(&pfd, 1, 100);
    Result<size_t> ran = disk.Poll();
    ASSERT_TRUE(ran.ok()) << ran.error().message();
    idle_rounds = (ready > 0 || *ran > 0) ? 0 : idle_rounds + 1;
  }
  ASSERT_TRUE(done());
}

TEST(BlockBackendAsyncTest, SubmitBeforeStartAsyncFails) {
  TempDir dir;
  testing::WriteFileBytes(dir.File("a.raw"), std::vector<uint8_t>(4096, 0));
  auto disk = OpenImage(dir.File("a.raw"), ImageFormat::kRaw).value();
  std::string message;
  std::vector<uint8_t> buffer(512);
  disk->Submit({.op = BlockOp::kRead, .offset = 0, .iov = {{buffer.data(), buffer.size()}},
                .done = [&](Status s) { message = s.error().message(); }});
  EXPECT_EQ(message, dir.File("a.raw") + ": Submit() called before StartAsync()");
}

class AsyncFormatTest : public ::testing::TestWithParam<ImageFormat> {};

TEST_P(AsyncFormatTest, ScatterGatherWriteThenRead) {
  TempDir dir;
  const std::string path = dir.File("disk");
  const uint64_t size = 4 << 20;
  if (GetParam() == ImageFormat::kRaw) {
    ASSERT_TRUE(CreateImage(path, {.format = ImageFormat::kRaw, .size = size}).ok());
  } else {
    testing::WriteFileBytes(dir.File("base.raw"), RandomBytes(size / 2, 99));
    ASSERT_TRUE(CreateImage(path, {.format = ImageFormat::kQcow2, .size = size, .cluster_size = 4096,
                                   .backing_file = "base.raw",
                                   .backing_format = ImageFormat::kRaw})
                    .ok());
  }
  auto disk = OpenImage(path, GetParam()).value();
  Result<int> event_fd = disk->StartAsync(8);
  ASSERT_TRUE(event_fd.ok()) << event_fd.error().message();

  std::vector<uint8_t> expected(size, 0);
  {
    auto base = testing::ReadFileBytes(dir.File("base.raw"));
    std::copy(base.begin(), base.end(), expected.begin());
  }
  // Many writes in flight at once, each split over three buffers.
  std::vector<std::vector<uint8_t>> buffers;
  int pending = 0;
  for (int i = 0; i < 64; ++i) {
    const uint64_t offset = uint64_t(i) * 61440 + 512;
    buffers.push_back(RandomBytes(3 * 1536, i));
    uint8_t* data = buffers.back().data();
    std::memcpy(expected.data() + offset, data, 3 * 1536);
    ++pending;
    disk->Submit({.op = BlockOp::kWrite,
                  .offset = offset,
                  .iov = {{data, 1536}, {data + 1536, 1536}, {data + 3072, 1536}},
                  .done = [&](Status s) {
                    EXPECT_TRUE(s.ok()) << s.error().message();
                    --pending;
                  }});
  }
  bool flushed = false;
  disk->Submit({.op = BlockOp::kFlush, .done = [&](Status s) {
                  EXPECT_TRUE(s.ok()) << s.error().message();
                  flushed = true;
                }});
  PollUntil(*disk, *event_fd, [&] { return pending == 0 && flushed; });
  std::vector<uint8_t> out(size);
  bool read_done = false;
  disk->Submit({.op = BlockOp::kRead, .offset = 0,
                .iov = {{out.data(), size / 3}, {out.data() + size / 3, size - size / 3}},
                .done = [&](Status s) {
                  EXPECT_TRUE(s.ok()) << s.error().message();
                  read_done = true;
                }});
  EXPECT_FALSE(read_done);
  ASSERT_TRUE(disk->Drain().ok());
  EXPECT_TRUE(read_done);
  EXPECT_EQ(out, expected);
}

INSTANTIATE_TEST_SUITE_P(Formats, AsyncFormatTest,
                         ::testing::Values(ImageFormat::kRaw, ImageFormat::kQcow2));

TEST(BlockBackendAsyncTest, SynchronousCallFailsWhileRequestsInFlight) {
  TempDir dir;
  ASSERT_TRUE(CreateImage(dir.File("a.qcow2"), {.size = 1 << 20}).ok());
  auto disk = OpenImage(dir.File("a.qcow2"), ImageFormat::kQcow2).value();
  ASSERT_TRUE(disk->StartAsync().ok());
  std::vector<uint8_t> buffer(4096, 1);
  disk->Submit({.op = BlockOp::kWrite, .offset = 0, .iov = {{buffer.data(), buffer.size()}},
                .done = [](Status) {}});
  Status sync = disk->Read(0, buffer);
  ASSERT_FALSE(sync.ok());
  EXPECT_EQ(sync.error().message(),
            dir.File("a.qcow2") + ": 1 asynchronous requests are in flight; drain them first");
  ASSERT_TRUE(disk->Drain().ok());
  EXPECT_TRUE(disk->Read(0, buffer).ok());
}

TEST(BlockBackendAsyncTest, RequestOutsideDiskCompletesWithError) {
  TempDir dir;
  ASSERT_TRUE(CreateImage(dir.File("a.qcow2"), {.size = 1 << 20}).ok());
  auto disk = OpenImage(dir.File("a.qcow2"), ImageFormat::kQcow2).value();
  ASSERT_TRUE(disk->StartAsync().ok());
  std::vector<uint8_t> buffer(1024);
  std::string message;
  disk->Submit({.op = BlockOp::kRead, .offset = (1 << 20) - 512,
                .iov = {{buffer.data(), buffer.size()}},
                .done = [&](Status s) { message = s.ok() ? "ok" : s.error().message(); }});
  EXPECT_EQ(message, "");
  ASSERT_TRUE(disk->Drain().ok());
  EXPECT_EQ(message, dir.File("a.qcow2") +
                         ": request of 1024 bytes at offset 0xffe00 is outside the disk "
                         "(size 0x100000)");
}

TEST(BlockBackendAsyncTest, ChildStartsItsOwnRingAfterFork) {
  TempDir dir;
  ASSERT_TRUE(CreateImage(dir.File("a.qcow2"), {.size = 1 << 20}).ok());
  auto disk = OpenImage(dir.File("a.qcow2"), ImageFormat::kQcow2).value();
  ASSERT_TRUE(disk->StartAsync().ok());
  std::vector<uint8_t> pattern(4096, 0x42);
  bool written = false;
  disk->Submit({.op = BlockOp::kWrite, .offset = 8192, .iov = {{pattern.data(), 4096}},
                .done = [&](Status s) { written = s.ok(); }});
  ASSERT_TRUE(disk->Drain().ok());
  ASSERT_TRUE(written);

  pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    disk->AbandonAsyncAfterFork();
    Result<int> fd = disk->StartAsync();
    std::vector<uint8_t> back(4096);
    bool ok = false;
    if (fd.ok()) {
      disk->Submit({.op = BlockOp::kRead, .offset = 8192, .iov = {{back.data(), 4096}},
                    .done = [&](Status s) { ok = s.ok(); }});
      ok = disk->Drain().ok() && ok && back == pattern;
    }
    _exit(ok ? 0 : 1);
  }
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
  // The parent's ring still works.
  std::vector<uint8_t> back(4096);
  bool read = false;
  disk->Submit({.op = BlockOp::kRead, .offset = 8192, .iov = {{back.data(), 4096}},
                .done = [&](Status s) { read = s.ok(); }});
  ASSERT_TRUE(disk->Drain().ok());
  EXPECT_TRUE(read);
  EXPECT_EQ(back, pattern);
}

}  // namespace
}  // namespace forkvmm::block
