#include "devices/virtio/virtqueue.h"

#include <gtest/gtest.h>

#include <random>

#include "devices/virtio/block_request.h"
#include "devices/virtio/test_ring.h"

namespace forkvmm::devices::virtio {
namespace {

using testing::TestRing;

constexpr uint64_t kAllFeatures = kVirtqueueFeatures;
constexpr uint64_t kNoIndirect = kVirtqueueFeatures & ~(uint64_t{1} << VIRTIO_RING_F_INDIRECT_DESC);
constexpr uint64_t kNoEventIndex = kVirtqueueFeatures & ~(uint64_t{1} << VIRTIO_RING_F_EVENT_IDX);

class VirtqueueTest : public ::testing::Test {
 protected:
  Virtqueue MakeQueue(uint64_t features = kAllFeatures) {
    auto queue = Virtqueue::Create(memory_, ring_.state(), kMaxQueueSize, features);
    EXPECT_TRUE(queue.ok()) << queue.error().message();
    return std::move(queue).value();
  }

  DescriptorChain PopChain(Virtqueue& queue) {
    auto popped = queue.Pop();
    EXPECT_TRUE(popped.ok()) << popped.error().message();
    EXPECT_TRUE(!popped.ok() || popped->has_value()) << "the ring is empty";
    return popped.ok() && popped->has_value() ? std::move(**popped) : DescriptorChain{};
  }

  memory::GuestMemory memory_ = testing::MakeTestMemory();
  TestRing ring_{memory_, 8};
};

TEST_F(VirtqueueTest, EmptyRingPopsNothing) {
  Virtqueue queue = MakeQueue();
  auto popped = queue.Pop();
  ASSERT_TRUE(popped.ok());
  EXPECT_FALSE(popped->has_value());
}

TEST_F(VirtqueueTest, PopsChainInOrder) {
  const uint64_t header = ring_.Allocate(16);
  const uint64_t data = ring_.Allocate(512);
  const uint64_t status = ring_.Allocate(1);
  const uint16_t head = ring_.AddChain({{header, 16, false}, {data, 512, true}, {status, 1, true}});
  Virtqueue queue = MakeQueue();

  DescriptorChain chain = PopChain(queue);
  EXPECT_EQ(chain.head, head);
  EXPECT_EQ(chain.error, ChainError::kNone);
  EXPECT_TRUE(chain.complete);
  ASSERT_EQ(chain.buffers.size(), 3u);
  EXPECT_EQ(chain.buffers[0].address, header);
  EXPECT_FALSE(chain.buffers[0].device_writable);
  EXPECT_EQ(chain.buffers[1].length, 512u);
  EXPECT_TRUE(chain.buffers[2].device_writable);
  EXPECT_FALSE(queue.Pop()->has_value());
}

TEST_F(VirtqueueTest, LoopIsTooLong) {
  const uint64_t buffer = ring_.Allocate(64);
  ring_.SetDescriptor(0, buffer, 16, VRING_DESC_F_NEXT, 1);
  ring_.SetDescriptor(1, buffer, 16, VRING_DESC_F_NEXT, 0);
  ring_.MakeAvailable(0);
  Virtqueue queue = MakeQueue();

  DescriptorChain chain = PopChain(queue);
  EXPECT_EQ(chain.error, ChainError::kTooLong);
  EXPECT_FALSE(chain.complete);
  EXPECT_LE(chain.buffers.size(), ring_.size());
  EXPECT_FALSE(queue.broken());
}

TEST_F(VirtqueueTest, SelfLoopIsTooLong) {
  ring_.SetDescriptor(3, ring_.Allocate(16), 16, VRING_DESC_F_NEXT, 3);
  ring_.MakeAvailable(3);
  Virtqueue queue = MakeQueue();
  EXPECT_EQ(PopChain(queue).error, ChainError::kTooLong);
}

TEST_F(VirtqueueTest, NextOutsideTable) {
  ring_.SetDescriptor(0, ring_.Allocate(16), 16, VRING_DESC_F_NEXT, 8);
  ring_.MakeAvailable(0);
  Virtqueue queue = MakeQueue();
  DescriptorChain chain = PopChain(queue);
  EXPECT_EQ(chain.error, ChainError::kNextOutOfRange);
  EXPECT_FALSE(chain.complete);
}

TEST_F(VirtqueueTest, BufferOutsideRam) {
  const uint64_t status = ring_.Allocate(1);
  ring_.AddChain({{testing::kTestRamBytes - 8, 16, false}, {status, 1, true}});
  Virtqueue queue = MakeQueue();
  DescriptorChain chain = PopChain(queue);
  EXPECT_EQ(chain.error, ChainError::kBufferOutsideRam);
  // The walk went on, so the status buffer is still known.
  EXPECT_TRUE(chain.complete);
  ASSERT_EQ(chain.buffers.size(), 1u);
  EXPECT_EQ(chain.buffers[0].address, status);
}

TEST_F(VirtqueueTest, BufferAddressOverflows) {
  const uint64_t status = ring_.Allocate(1);
  ring_.AddChain({{~uint64_t{0} - 4, 16, false}, {status, 1, true}});
  Virtqueue queue = MakeQueue();
  EXPECT_EQ(PopChain(queue).error, ChainError::kBufferOutsideRam);
}

TEST_F(VirtqueueTest, LastBufferOutsideRamLeavesChainIncomplete) {
  ring_.AddChain({{ring_.Allocate(16), 16, false}, {testing::kTestRamBytes, 1, true}});
  Virtqueue queue = MakeQueue();
  DescriptorChain chain = PopChain(queue);
  EXPECT_EQ(chain.error, ChainError::kBufferOutsideRam);
  EXPECT_FALSE(chain.complete);
}

TEST_F(VirtqueueTest, ReadableAfterWritable) {
  ring_.AddChain({{ring_.Allocate(16), 16, true}, {ring_.Allocate(16), 16, false}});
  Virtqueue queue = MakeQueue();
  DescriptorChain chain = PopChain(queue);
  EXPECT_EQ(chain.error, ChainError::kReadableAfterWritable);
  EXPECT_TRUE(chain.complete);
}

TEST_F(VirtqueueTest, MoreThanFourGibibytes) {
  // 300 overlapping buffers of 14 MiB add up to 4200 MiB. Overlap is
  // allowed, but the total is not.
  TestRing big(memory_, 512, 0x40000);
  std::vector<DescriptorBuffer> buffers(300, {memory::kMiB, 14 * memory::kMiB, false});
  buffers.back() = {big.Allocate(1), 1, true};
  big.AddChain(buffers);
  auto created = Virtqueue::Create(memory_, big.state(), kMaxQueueSize, kAllFeatures);
  ASSERT_TRUE(created.ok());
  DescriptorChain chain = PopChain(*created);
  EXPECT_EQ(chain.error, ChainError::kTooManyBytes);
  EXPECT_TRUE(chain.complete);
}

TEST_F(VirtqueueTest, ZeroLengthBufferIsAccepted) {
  const uint64_t status = ring_.Allocate(1);
  ring_.AddChain({{ring_.Allocate(16), 0, false}, {status, 1, true}});
  Virtqueue queue = MakeQueue();
  DescriptorChain chain = PopChain(queue);
  EXPECT_EQ(chain.error, ChainError::kNone);
  EXPECT_EQ(chain.buffers.size(), 2u);
}

TEST_F(VirtqueueTest, IndirectTable) {
  const uint64_t header = ring_.Allocate(16);
  const uint64_t status = ring_.Allocate(1);
  const uint64_t table = ring_.Allocate(2 * sizeof(vring_desc));
  ring_.WriteTable(table, {{header, 16, VRING_DESC_F_NEXT, 1}, {status, 1, VRING_DESC_F_WRITE, 0}});
  ring_.SetDescriptor(5, table, 2 * sizeof(vring_desc), VRING_DESC_F_INDIRECT);
  ring_.MakeAvailable(5);
  Virtqueue queue = MakeQueue();

  DescriptorChain chain = PopChain(queue);
  EXPECT_EQ(chain.head, 5);
  EXPECT_EQ(chain.error, ChainError::kNone);
  EXPECT_TRUE(chain.complete);
  ASSERT_EQ(chain.buffers.size(), 2u);
  EXPECT_EQ(chain.buffers[0].address, header);
  EXPECT_EQ(chain.buffers[1].address, status);
  EXPECT_TRUE(chain.buffers[1].device_writable);
}

TEST_F(VirtqueueTest, DirectThenIndirect) {
  const uint64_t header = ring_.Allocate(16);
  const uint64_t status = ring_.Allocate(1);
  const uint64_t table = ring_.Allocate(sizeof(vring_desc));
  ring_.WriteTable(table, {{status, 1, VRING_DESC_F_WRITE, 0}});
  ring_.SetDescriptor(0, header, 16, VRING_DESC_F_NEXT, 1);
  ring_.SetDescriptor(1, table, sizeof(vring_desc), VRING_DESC_F_INDIRECT);
  ring_.MakeAvailable(0);
  Virtqueue queue = MakeQueue();
  DescriptorChain chain = PopChain(queue);
  EXPECT_EQ(chain.error, ChainError::kNone);
  ASSERT_EQ(chain.buffers.size(), 2u);
  EXPECT_EQ(chain.buffers[1].address, status);
}

TEST_F(VirtqueueTest, IndirectTableOfQueueSizeFits) {
  std::vector<vring_desc> table(ring_.size());
  const uint64_t buffer = ring_.Allocate(16);
  for (uint16_t i = 0; i < table.size(); ++i) {
    table[i] = {buffer, 16, VRING_DESC_F_NEXT, static_cast<uint16_t>(i + 1)};
  }
  table.back() = {buffer, 1, VRING_DESC_F_WRITE, 0};
  const uint64_t address = ring_.Allocate(table.size() * sizeof(vring_desc));
  ring_.WriteTable(address, table);
  ring_.SetDescriptor(0, address, table.size() * sizeof(vring_desc), VRING_DESC_F_INDIRECT);
  ring_.MakeAvailable(0);
  Virtqueue queue = MakeQueue();
  DescriptorChain chain = PopChain(queue);
  EXPECT_EQ(chain.error, ChainError::kNone);
  EXPECT_EQ(chain.buffers.size(), ring_.size());
}

TEST_F(VirtqueueTest, IndirectChainLongerThanQueue) {
  // Nine descriptors in an indirect table of a queue of size 8.
  std::vector<vring_desc> table(9);
  const uint64_t buffer = ring_.Allocate(16);
  for (uint16_t i = 0; i < table.size(); ++i) {
    table[i] = {buffer, 16, VRING_DESC_F_NEXT, static_cast<uint16_t>(i + 1)};
  }
  table.back().flags = VRING_DESC_F_WRITE;
  const uint64_t address = ring_.Allocate(table.size() * sizeof(vring_desc));
  ring_.WriteTable(address, table);
  ring_.SetDescriptor(0, address, table.size() * sizeof(vring_desc), VRING_DESC_F_INDIRECT);
  ring_.MakeAvailable(0);
  Virtqueue queue = MakeQueue();
  EXPECT_EQ(PopChain(queue).error, ChainError::kTooLong);
}

TEST_F(VirtqueueTest, IndirectLoop) {
  const uint64_t buffer = ring_.Allocate(16);
  const uint64_t table = ring_.Allocate(2 * sizeof(vring_desc));
  ring_.WriteTable(table, {{buffer, 16, VRING_DESC_F_NEXT, 1}, {buffer, 16, VRING_DESC_F_NEXT, 0}});
  ring_.SetDescriptor(0, table, 2 * sizeof(vring_desc), VRING_DESC_F_INDIRECT);
  ring_.MakeAvailable(0);
  Virtqueue queue = MakeQueue();
  EXPECT_EQ(PopChain(queue).error, ChainError::kTooLong);
}

TEST_F(VirtqueueTest, IndirectNextOutsideTable) {
  const uint64_t buffer = ring_.Allocate(16);
  const uint64_t table = ring_.Allocate(sizeof(vring_desc));
  ring_.WriteTable(table, {{buffer, 16, VRING_DESC_F_NEXT, 1}});
  ring_.SetDescriptor(0, table, sizeof(vring_desc), VRING_DESC_F_INDIRECT);
  ring_.MakeAvailable(0);
  Virtqueue queue = MakeQueue();
  EXPECT_EQ(PopChain(queue).error, ChainError::kNextOutOfRange);
}

TEST_F(VirtqueueTest, IndirectNotNegotiated) {
  const uint64_t table = ring_.Allocate(sizeof(vring_desc));
  ring_.WriteTable(table, {{ring_.Allocate(1), 1, VRING_DESC_F_WRITE, 0}});
  ring_.SetDescriptor(0, table, sizeof(vring_desc), VRING_DESC_F_INDIRECT);
  ring_.MakeAvailable(0);
  Virtqueue queue = MakeQueue(kNoIndirect);
  EXPECT_EQ(PopChain(queue).error, ChainError::kIndirectNotNegotiated);
}

TEST_F(VirtqueueTest, NestedIndirect) {
  const uint64_t inner = ring_.Allocate(sizeof(vring_desc));
  ring_.WriteTable(inner, {{ring_.Allocate(1), 1, VRING_DESC_F_WRITE, 0}});
  const uint64_t outer = ring_.Allocate(sizeof(vring_desc));
  ring_.WriteTable(outer, {{inner, sizeof(vring_desc), VRING_DESC_F_INDIRECT, 0}});
  ring_.SetDescriptor(0, outer, sizeof(vring_desc), VRING_DESC_F_INDIRECT);
  ring_.MakeAvailable(0);
  Virtqueue queue = MakeQueue();
  EXPECT_EQ(PopChain(queue).error, ChainError::kIndirectMisplaced);
}

TEST_F(VirtqueueTest, IndirectWithNext) {
  const uint64_t table = ring_.Allocate(sizeof(vring_desc));
  ring_.WriteTable(table, {{ring_.Allocate(1), 1, VRING_DESC_F_WRITE, 0}});
  ring_.SetDescriptor(0, table, sizeof(vring_desc), VRING_DESC_F_INDIRECT | VRING_DESC_F_NEXT, 1);
  ring_.SetDescriptor(1, ring_.Allocate(1), 1, VRING_DESC_F_WRITE);
  ring_.MakeAvailable(0);
  Virtqueue queue = MakeQueue();
  EXPECT_EQ(PopChain(queue).error, ChainError::kIndirectMisplaced);
}

TEST_F(VirtqueueTest, IndirectTableBadLength) {
  const uint64_t table = ring_.Allocate(32);
  ring_.SetDescriptor(0, table, 20, VRING_DESC_F_INDIRECT);
  ring_.SetDescriptor(1, table, 0, VRING_DESC_F_INDIRECT);
  ring_.SetDescriptor(2, testing::kTestRamBytes - 16, 32, VRING_DESC_F_INDIRECT);
  ring_.MakeAvailable(0);
  ring_.MakeAvailable(1);
  ring_.MakeAvailable(2);
  Virtqueue queue = MakeQueue();
  EXPECT_EQ(PopChain(queue).error, ChainError::kIndirectTableInvalid);
  EXPECT_EQ(PopChain(queue).error, ChainError::kIndirectTableInvalid);
  EXPECT_EQ(PopChain(queue).error, ChainError::kIndirectTableInvalid);
}

TEST_F(VirtqueueTest, AvailableIndexTooFarAheadBreaksQueue) {
  ring_.SetAvailableIndex(9);  // queue size 8
  Virtqueue queue = MakeQueue();
  auto popped = queue.Pop();
  EXPECT_FALSE(popped.ok());
  EXPECT_TRUE(queue.broken());
  EXPECT_TRUE(queue.Save().broken);
  // It stays broken even if the index comes back.
  ring_.SetAvailableIndex(0);
  EXPECT_FALSE(queue.Pop().ok());
}

TEST_F(VirtqueueTest, HeadOutsideTableBreaksQueue) {
  ring_.MakeAvailable(8);
  Virtqueue queue = MakeQueue();
  EXPECT_FALSE(queue.Pop().ok());
  EXPECT_TRUE(queue.broken());
}

TEST_F(VirtqueueTest, AvailableIndexWraps) {
  VirtqueueState state = ring_.state();
  state.next_available = 0xffff;
  state.next_used = 0xffff;
  ring_.SetAvailableIndex(0xffff);
  auto created = Virtqueue::Create(memory_, state, kMaxQueueSize, kAllFeatures);
  ASSERT_TRUE(created.ok());
  Virtqueue queue = std::move(created).value();
  const uint16_t head = ring_.AddChain({{ring_.Allocate(1), 1, true}});
  DescriptorChain chain = PopChain(queue);
  EXPECT_EQ(chain.head, head);
  ASSERT_TRUE(queue.PushUsed(chain.head, 1).ok());
  EXPECT_EQ(ring_.UsedIndex(), 0);
  EXPECT_EQ(queue.Save().next_available, 0);
}

TEST_F(VirtqueueTest, PushUsedWritesElementThenIndex) {
  const uint16_t first = ring_.AddChain({{ring_.Allocate(1), 1, true}});
  const uint16_t second = ring_.AddChain({{ring_.Allocate(1), 1, true}});
  Virtqueue queue = MakeQueue();
  PopChain(queue);
  PopChain(queue);
  ASSERT_TRUE(queue.PushUsed(second, 7).ok());
  ASSERT_TRUE(queue.PushUsed(first, 9).ok());
  EXPECT_EQ(ring_.UsedIndex(), 2);
  EXPECT_EQ(ring_.UsedElement(0).id, second);
  EXPECT_EQ(ring_.UsedElement(0).len, 7u);
  EXPECT_EQ(ring_.UsedElement(1).id, first);
  EXPECT_EQ(ring_.UsedElement(1).len, 9u);
}

TEST_F(VirtqueueTest, NotifyRespectsNoInterruptFlag) {
  Virtqueue queue = MakeQueue(kNoEventIndex);
  EXPECT_FALSE(queue.ShouldNotify());  // nothing used yet
  ASSERT_TRUE(queue.PushUsed(0, 0).ok());
  EXPECT_TRUE(queue.ShouldNotify());
  ring_.SetAvailableFlags(VRING_AVAIL_F_NO_INTERRUPT);
  ASSERT_TRUE(queue.PushUsed(0, 0).ok());
  EXPECT_FALSE(queue.ShouldNotify());
}

TEST_F(VirtqueueTest, NotifyFollowsUsedEvent) {
  Virtqueue queue = MakeQueue();
  ring_.SetAvailableFlags(VRING_AVAIL_F_NO_INTERRUPT);  // ignored with EVENT_IDX
  ring_.SetUsedEvent(0);
  ASSERT_TRUE(queue.PushUsed(0, 0).ok());  // used index 0 -> 1 crosses used_event 0
  EXPECT_TRUE(queue.ShouldNotify());
  ring_.SetUsedEvent(2);
  ASSERT_TRUE(queue.PushUsed(0, 0).ok());  // 1 -> 2: not yet
  EXPECT_FALSE(queue.ShouldNotify());
  ASSERT_TRUE(queue.PushUsed(0, 0).ok());  // 2 -> 3 crosses 2
  EXPECT_TRUE(queue.ShouldNotify());
  ring_.SetUsedEvent(3);
  ASSERT_TRUE(queue.PushUsed(0, 0).ok());
  ASSERT_TRUE(queue.PushUsed(0, 0).ok());  // 3 -> 5 in one batch crosses 3
  EXPECT_TRUE(queue.ShouldNotify());
}

TEST_F(VirtqueueTest, AvailEventAsksForNextEntry) {
  ring_.AddChain({{ring_.Allocate(1), 1, true}});
  Virtqueue queue = MakeQueue();
  PopChain(queue);
  EXPECT_FALSE(queue.RequestAvailableNotification());
  EXPECT_EQ(ring_.AvailEvent(), 1);
  // An entry added meanwhile is reported so the device pops it.
  ring_.AddChain({{ring_.Allocate(1), 1, true}});
  EXPECT_TRUE(queue.RequestAvailableNotification());
}

TEST_F(VirtqueueTest, CreateRejectsBadConfigurations) {
  auto create = [&](VirtqueueConfig config) {
    return Virtqueue::Create(memory_, {.config = config}, 256, kAllFeatures).ok();
  };
  EXPECT_TRUE(create(ring_.config()));
  VirtqueueConfig config = ring_.config();
  config.ready = false;
  EXPECT_FALSE(create(config));
  config = ring_.config();
  config.size = 6;
  EXPECT_FALSE(create(config));
  config.size = 0;
  EXPECT_FALSE(create(config));
  config.size = 512;
  EXPECT_FALSE(create(config));
  config = ring_.config();
  config.descriptor_table += 8;
  EXPECT_FALSE(create(config));
  config = ring_.config();
  config.available_ring += 1;
  EXPECT_FALSE(create(config));
  config = ring_.config();
  config.used_ring += 2;
  EXPECT_FALSE(create(config));
  config = ring_.config();
  config.used_ring = testing::kTestRamBytes - 16;
  EXPECT_FALSE(create(config));
  config = ring_.config();
  config.descriptor_table = ~uint64_t{0} & ~uint64_t{15};
  EXPECT_FALSE(create(config));
}

TEST_F(VirtqueueTest, SaveAndRestoreContinueWhereLeft) {
  ring_.AddChain({{ring_.Allocate(1), 1, true}});
  const uint16_t second = ring_.AddChain({{ring_.Allocate(1), 1, true}});
  Virtqueue queue = MakeQueue();
  DescriptorChain first = PopChain(queue);
  ASSERT_TRUE(queue.PushUsed(first.head, 1).ok());
  VirtqueueState saved = queue.Save();
  EXPECT_EQ(saved.config, ring_.config());
  EXPECT_EQ(saved.next_available, 1);
  EXPECT_EQ(saved.next_used, 1);
  EXPECT_FALSE(saved.broken);

  auto restored = Virtqueue::Create(memory_, saved, kMaxQueueSize, kAllFeatures);
  ASSERT_TRUE(restored.ok());
  EXPECT_EQ(restored->Save(), saved);
  DescriptorChain next = PopChain(*restored);
  EXPECT_EQ(next.head, second);
  ASSERT_TRUE(restored->PushUsed(next.head, 1).ok());
  EXPECT_EQ(ring_.UsedIndex(), 2);
}

// Random descriptor tables and rings: whatever the guest writes, every
// buffer handed out lies inside guest RAM, no chain is longer than the
// queue, and the block request parser accepts or rejects it without harm.
TEST_F(VirtqueueTest, RandomRingsStayInsideRam) {
  std::mt19937_64 random(12345);
  const uint64_t table = ring_.Allocate(16 * sizeof(vring_desc));
  auto random_address = [&]() -> uint64_t {
    switch (random() % 4) {
      case 0:
        return random() % testing::kTestRamBytes;
      case 1:
        return testing::kTestRamBytes - random() % 64;
      case 2:
        return ~uint64_t{0} - random() % 64;
      default:
        return memory::kMiB + random() % 4096;
    }
  };
  auto random_descriptor = [&]() {
    return vring_desc{random_address(),
                      static_cast<uint32_t>(random() % 2 ? random() % 2048 : random()),
                      static_cast<uint16_t>(random() % 8), static_cast<uint16_t>(random() % 10)};
  };
  const BlockRequestLimits limits{.capacity_sectors = 2048,
                                  .discard = true,
                                  .write_zeroes = true,
                                  .max_discard_sectors = 64,
                                  .max_discard_segments = 4,
                                  .max_write_zeroes_sectors = 64,
                                  .max_write_zeroes_segments = 4};
  int popped_chains = 0;
  int broken_rounds = 0;
  for (int round = 0; round < 2000; ++round) {
    for (uint16_t i = 0; i < ring_.size(); ++i) {
      const vring_desc descriptor = random_descriptor();
      ring_.SetDescriptor(i, descriptor.addr, descriptor.len, descriptor.flags, descriptor.next);
    }
    std::vector<vring_desc> indirect(16);
    for (vring_desc& descriptor : indirect) descriptor = random_descriptor();
    ring_.WriteTable(table, indirect);
    if (random() % 2)
      ring_.SetDescriptor(random() % 8, table, 16 * (random() % 17), VRING_DESC_F_INDIRECT);
    VirtqueueState state = ring_.state();
    state.next_available = ring_.AvailableIndex();
    for (int i = 0; i < 4; ++i) ring_.MakeAvailable(static_cast<uint16_t>(random() % 9));

    auto created = Virtqueue::Create(memory_, state, kMaxQueueSize, kAllFeatures);
    ASSERT_TRUE(created.ok());
    Virtqueue queue = std::move(created).value();
    int chains = 0;
    for (int pop = 0; pop < 8; ++pop) {
      auto popped = queue.Pop();
      if (!popped.ok() || !popped->has_value()) break;
      const DescriptorChain& chain = **popped;
      ++chains;
      ASSERT_LE(chain.buffers.size(), ring_.size());
      for (const DescriptorBuffer& buffer : chain.buffers) {
        ASSERT_TRUE(memory_.IsValidRange(buffer.address, buffer.length));
      }
      ParsedBlockRequest request = ParseBlockRequest(memory_, chain, limits);
      const uint8_t* start = memory_.HostAddress(0, 1).value();
      for (const iovec& piece : request.data) {
        const auto* base = static_cast<const uint8_t*>(piece.iov_base);
        ASSERT_GE(base, start);
        ASSERT_LE(base + piece.iov_len, start + testing::kTestRamBytes);
      }
      if (request.status_address) {
        ASSERT_TRUE(memory_.IsValidRange(*request.status_address, 1));
      }
    }
    // Heads 0-7 make chains and head 8 breaks the queue, so each round
    // pops chains until the first 8.
    popped_chains += chains;
    broken_rounds += queue.broken() ? 1 : 0;
  }
  EXPECT_GT(popped_chains, 2000);
  EXPECT_GT(broken_rounds, 100);
}

}  // namespace
}  // namespace forkvmm::devices::virtio
