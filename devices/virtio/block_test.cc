#include "devices/virtio/block.h"

#include <gtest/gtest.h>
#include <linux/virtio_ids.h>
#include <linux/virtio_mmio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <fstream>
#include <random>
#include <thread>

#include "devices/block/image.h"
#include "devices/block/raw.h"
#include "devices/virtio/mmio_transport.h"
#include "devices/virtio/test_ring.h"

namespace forkvmm::devices::virtio {
namespace {

using testing::TestRing;

constexpr uint64_t kBase = 0xd000'0000;
constexpr uint64_t kDiskBytes = memory::kMiB;
constexpr uint64_t kDiskSectors = kDiskBytes / kSectorSize;
constexpr uint16_t kQueueSize = 16;
constexpr char kDiskId[] = "forkvmm-disk0";

std::vector<uint8_t> Pattern(size_t size, uint32_t seed) {
  std::mt19937 random(seed);
  std::vector<uint8_t> bytes(size);
  for (uint8_t& byte : bytes) byte = static_cast<uint8_t>(random());
  return bytes;
}

std::vector<uint8_t> ReadFile(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(file), {});
}

void WriteFile(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::ofstream file(path, std::ios::binary | std::ios::trunc);
  file.write(reinterpret_cast<const char*>(bytes.data()),
             static_cast<std::streamsize>(bytes.size()));
}

std::vector<uint8_t> Slice(const std::vector<uint8_t>& bytes, uint64_t offset, uint64_t length) {
  return std::vector<uint8_t>(bytes.begin() + static_cast<ptrdiff_t>(offset),
                              bytes.begin() + static_cast<ptrdiff_t>(offset + length));
}

class CountingIrq : public IrqLine {
 public:
  void Trigger() override { ++count; }
  std::atomic<int> count{0};
};

struct Completion {
  bool done = false;
  uint8_t status = 0xff;
  uint32_t used_length = 0;
  uint16_t id = 0;
};

// A virtio-blk device behind an MMIO transport, driven the way a guest
// driver would: registers, rings in guest memory, QueueNotify.
class VirtioBlockTest : public ::testing::Test {
 protected:
  void SetUp() override {
    disk_path_ = dir_.File("disk.raw");
    disk_ = Pattern(kDiskBytes, 1);
    WriteFile(disk_path_, disk_);
  }

  void TearDown() override { transport_.reset(); }

  std::unique_ptr<block::BlockBackend> OpenRaw(const std::string& path, bool read_only = false) {
    auto opened = block::RawBackend::Open(path, read_only);
    EXPECT_TRUE(opened.ok()) << opened.error().message();
    return opened.ok() ? std::unique_ptr<block::BlockBackend>(std::move(opened).value()) : nullptr;
  }

  void CreateDevice(std::unique_ptr<block::BlockBackend> backend) {
    auto created =
        VirtioBlock::Create(std::move(backend), {.id = kDiskId, .queue_size = kQueueSize});
    ASSERT_TRUE(created.ok()) << created.error().message();
    device_ = std::move(created).value();
    auto transport = MmioTransport::Create(device_, memory_, kBase, irq_, nullptr);
    ASSERT_TRUE(transport.ok()) << transport.error().message();
    transport_ = std::move(transport).value();
  }

  uint32_t Read32(uint64_t offset) {
    uint32_t value = 0;
    transport_->Read(offset, {reinterpret_cast<uint8_t*>(&value), 4});
    return value;
  }
  void Write32(uint64_t offset, uint32_t value) {
    transport_->Write(offset, {reinterpret_cast<const uint8_t*>(&value), 4});
  }

  uint64_t DeviceFeatures() {
    Write32(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
    uint64_t features = Read32(VIRTIO_MMIO_DEVICE_FEATURES);
    Write32(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
    return features | uint64_t{Read32(VIRTIO_MMIO_DEVICE_FEATURES)} << 32;
  }

  // Initializes the device as Linux does, accepting every offered feature.
  void StartDriver() {
    Write32(VIRTIO_MMIO_STATUS, 0);
    Write32(VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
    Write32(VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER);
    const uint64_t features = DeviceFeatures();
    Write32(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
    Write32(VIRTIO_MMIO_DRIVER_FEATURES, static_cast<uint32_t>(features));
    Write32(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    Write32(VIRTIO_MMIO_DRIVER_FEATURES, static_cast<uint32_t>(features >> 32));
    const uint32_t features_ok =
        VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK;
    Write32(VIRTIO_MMIO_STATUS, features_ok);
    ASSERT_EQ(Read32(VIRTIO_MMIO_STATUS), features_ok);
    const VirtqueueConfig config = ring_.config();
    Write32(VIRTIO_MMIO_QUEUE_SEL, 0);
    ASSERT_GE(Read32(VIRTIO_MMIO_QUEUE_NUM_MAX), config.size);
    Write32(VIRTIO_MMIO_QUEUE_NUM, config.size);
    Write32(VIRTIO_MMIO_QUEUE_DESC_LOW, static_cast<uint32_t>(config.descriptor_table));
    Write32(VIRTIO_MMIO_QUEUE_DESC_HIGH, 0);
    Write32(VIRTIO_MMIO_QUEUE_AVAIL_LOW, static_cast<uint32_t>(config.available_ring));
    Write32(VIRTIO_MMIO_QUEUE_AVAIL_HIGH, 0);
    Write32(VIRTIO_MMIO_QUEUE_USED_LOW, static_cast<uint32_t>(config.used_ring));
    Write32(VIRTIO_MMIO_QUEUE_USED_HIGH, 0);
    Write32(VIRTIO_MMIO_QUEUE_READY, 1);
    Write32(VIRTIO_MMIO_STATUS, features_ok | VIRTIO_CONFIG_S_DRIVER_OK);
    ASSERT_EQ(Read32(VIRTIO_MMIO_STATUS), features_ok | VIRTIO_CONFIG_S_DRIVER_OK);
    ASSERT_EQ(device_->lifecycle(), DeviceLifecycle::kRunning);
  }

  void StartRaw(bool read_only = false) {
    CreateDevice(OpenRaw(disk_path_, read_only));
    StartDriver();
  }

  uint64_t Header(uint32_t type, uint64_t sector) {
    virtio_blk_outhdr header{type, 0, sector};
    const uint64_t address = ring_.Allocate(sizeof(header));
    EXPECT_TRUE(memory_.WriteObject(address, header).ok());
    return address;
  }

  // Makes a request available: header, `data` buffers, then a status byte
  // preset to 0xff. Returns the status byte's address.
  uint64_t Post(uint32_t type, uint64_t sector, std::vector<DescriptorBuffer> data = {}) {
    std::vector<DescriptorBuffer> buffers = {{Header(type, sector), 16, false}};
    buffers.insert(buffers.end(), data.begin(), data.end());
    const uint64_t status = ring_.Allocate(1);
    ring_.WriteBytes(status, {0xff});
    buffers.push_back({status, 1, true});
    ring_.AddChain(buffers);
    ++posted_;
    return status;
  }

  void Kick() { Write32(VIRTIO_MMIO_QUEUE_NOTIFY, 0); }

  bool WaitForUsed(uint16_t index) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (ring_.UsedIndex() != index) {
      if (std::chrono::steady_clock::now() > deadline) return false;
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    return true;
  }

  // Posts one request, notifies, and waits for it to be used.
  Completion Run(uint32_t type, uint64_t sector, std::vector<DescriptorBuffer> data = {}) {
    const uint64_t status = Post(type, sector, std::move(data));
    Kick();
    Completion completion;
    completion.done = WaitForUsed(posted_);
    if (!completion.done) return completion;
    const vring_used_elem element = ring_.UsedElement(static_cast<uint16_t>(posted_ - 1));
    completion.status = ring_.ReadBytes(status, 1)[0];
    completion.used_length = element.len;
    completion.id = static_cast<uint16_t>(element.id);
    return completion;
  }

  // Reads `sectors` sectors from `sector` through the device.
  std::vector<uint8_t> ReadSectors(uint64_t sector, uint64_t sectors, uint8_t* status = nullptr) {
    const uint64_t bytes = sectors * kSectorSize;
    const uint64_t data = ring_.Allocate(bytes);
    Completion completion =
        Run(VIRTIO_BLK_T_IN, sector, {{data, static_cast<uint32_t>(bytes), true}});
    EXPECT_TRUE(completion.done);
    if (status) *status = completion.status;
    return ring_.ReadBytes(data, bytes);
  }

  Completion WriteSectors(uint64_t sector, const std::vector<uint8_t>& bytes) {
    const uint64_t data = ring_.Allocate(bytes.size());
    ring_.WriteBytes(data, bytes);
    return Run(VIRTIO_BLK_T_OUT, sector, {{data, static_cast<uint32_t>(bytes.size()), false}});
  }

  Completion RangeRequest(uint32_t type, uint64_t sector, uint32_t sectors, uint32_t flags = 0) {
    virtio_blk_discard_write_zeroes segment{sector, sectors, flags};
    const uint64_t address = ring_.Allocate(sizeof(segment));
    EXPECT_TRUE(memory_.WriteObject(address, segment).ok());
    return Run(type, 0, {{address, sizeof(segment), false}});
  }

  testing::TempDir dir_;
  std::string disk_path_;
  std::vector<uint8_t> disk_;
  memory::GuestMemory memory_ = testing::MakeTestMemory();
  TestRing ring_{memory_, kQueueSize};
  std::shared_ptr<CountingIrq> irq_ = std::make_shared<CountingIrq>();
  std::shared_ptr<VirtioBlock> device_;
  std::shared_ptr<MmioTransport> transport_;
  uint16_t posted_ = 0;
};

TEST_F(VirtioBlockTest, ConfigSpaceAndFeatures) {
  StartRaw();
  EXPECT_EQ(Read32(VIRTIO_MMIO_DEVICE_ID), uint32_t{VIRTIO_ID_BLOCK});
  virtio_blk_config config{};
  device_->ReadConfig(0, {reinterpret_cast<uint8_t*>(&config), sizeof(config)});
  EXPECT_EQ(config.capacity, kDiskSectors);
  EXPECT_EQ(config.seg_max, kQueueSize - 2u);
  EXPECT_EQ(config.blk_size, 512u);
  EXPECT_EQ(config.max_discard_sectors, kMaxDiscardSectors);
  EXPECT_EQ(config.max_discard_seg, kMaxDiscardSegments);
  EXPECT_EQ(config.max_write_zeroes_sectors, kMaxWriteZeroesSectors);
  EXPECT_EQ(config.max_write_zeroes_seg, kMaxWriteZeroesSegments);
  // Through the transport, 8 bytes at a time as Linux reads capacity.
  uint64_t capacity = 0;
  transport_->Read(VIRTIO_MMIO_CONFIG, {reinterpret_cast<uint8_t*>(&capacity), 8});
  EXPECT_EQ(capacity, kDiskSectors);

  const uint64_t features = DeviceFeatures();
  EXPECT_TRUE(features & (uint64_t{1} << VIRTIO_F_VERSION_1));
  EXPECT_TRUE(features & (uint64_t{1} << VIRTIO_BLK_F_FLUSH));
  EXPECT_TRUE(features & (uint64_t{1} << VIRTIO_BLK_F_SEG_MAX));
  EXPECT_TRUE(features & (uint64_t{1} << VIRTIO_BLK_F_BLK_SIZE));
  EXPECT_TRUE(features & (uint64_t{1} << VIRTIO_BLK_F_DISCARD));
  EXPECT_TRUE(features & (uint64_t{1} << VIRTIO_BLK_F_WRITE_ZEROES));
  EXPECT_FALSE(features & (uint64_t{1} << VIRTIO_BLK_F_RO));
}

TEST_F(VirtioBlockTest, ReadReturnsDiskContents) {
  StartRaw();
  uint8_t status = 0xff;
  EXPECT_EQ(ReadSectors(10, 8, &status), Slice(disk_, 10 * 512, 8 * 512));
  EXPECT_EQ(status, VIRTIO_BLK_S_OK);
  const vring_used_elem element = ring_.UsedElement(0);
  EXPECT_EQ(element.len, 8 * 512 + 1u);
  // The worker publishes the used element before it raises the interrupt.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (irq_->count == 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  EXPECT_GT(irq_->count, 0);
  EXPECT_EQ(Read32(VIRTIO_MMIO_INTERRUPT_STATUS) & VIRTIO_MMIO_INT_VRING,
            uint32_t{VIRTIO_MMIO_INT_VRING});
}

TEST_F(VirtioBlockTest, ReadAcrossScatteredBuffers) {
  StartRaw();
  const uint64_t first = ring_.Allocate(512);
  const uint64_t second = ring_.Allocate(1024);
  Completion completion = Run(VIRTIO_BLK_T_IN, 100, {{first, 512, true}, {second, 1024, true}});
  ASSERT_TRUE(completion.done);
  EXPECT_EQ(completion.status, VIRTIO_BLK_S_OK);
  EXPECT_EQ(ring_.ReadBytes(first, 512), Slice(disk_, 100 * 512, 512));
  EXPECT_EQ(ring_.ReadBytes(second, 1024), Slice(disk_, 101 * 512, 1024));
}

TEST_F(VirtioBlockTest, WriteReachesFileAndReadsBack) {
  StartRaw();
  const std::vector<uint8_t> data = Pattern(3 * 512, 2);
  Completion completion = WriteSectors(500, data);
  ASSERT_TRUE(completion.done);
  EXPECT_EQ(completion.status, VIRTIO_BLK_S_OK);
  EXPECT_EQ(completion.used_length, 1u);
  EXPECT_EQ(ReadSectors(500, 3), data);
  Completion flush = Run(VIRTIO_BLK_T_FLUSH, 0);
  ASSERT_TRUE(flush.done);
  EXPECT_EQ(flush.status, VIRTIO_BLK_S_OK);

  std::vector<uint8_t> expected = disk_;
  std::copy(data.begin(), data.end(), expected.begin() + 500 * 512);
  EXPECT_EQ(ReadFile(disk_path_), expected);
}

TEST_F(VirtioBlockTest, LastSectorAndOnePastTheEnd) {
  StartRaw();
  uint8_t status = 0xff;
  EXPECT_EQ(ReadSectors(kDiskSectors - 1, 1, &status), Slice(disk_, kDiskBytes - 512, 512));
  EXPECT_EQ(status, VIRTIO_BLK_S_OK);
  const std::vector<uint8_t> last = Pattern(512, 3);
  EXPECT_EQ(WriteSectors(kDiskSectors - 1, last).status, VIRTIO_BLK_S_OK);

  ReadSectors(kDiskSectors, 1, &status);
  EXPECT_EQ(status, VIRTIO_BLK_S_IOERR);
  ReadSectors(kDiskSectors - 1, 2, &status);
  EXPECT_EQ(status, VIRTIO_BLK_S_IOERR);
  EXPECT_EQ(WriteSectors(kDiskSectors, Pattern(512, 4)).status, VIRTIO_BLK_S_IOERR);
  // The device goes on serving.
  EXPECT_EQ(ReadSectors(kDiskSectors - 1, 1, &status), last);
  EXPECT_EQ(status, VIRTIO_BLK_S_OK);
  EXPECT_EQ(device_->counters().invalid_requests, 3u);
  EXPECT_EQ(Slice(ReadFile(disk_path_), kDiskBytes - 512, 512), last);
  EXPECT_EQ(ReadFile(disk_path_).size(), kDiskBytes);
}

TEST_F(VirtioBlockTest, GetId) {
  StartRaw();
  const uint64_t id = ring_.Allocate(kBlockIdBytes);
  ring_.WriteBytes(id, std::vector<uint8_t>(kBlockIdBytes, 0xee));
  Completion completion = Run(VIRTIO_BLK_T_GET_ID, 0, {{id, kBlockIdBytes, true}});
  ASSERT_TRUE(completion.done);
  EXPECT_EQ(completion.status, VIRTIO_BLK_S_OK);
  EXPECT_EQ(completion.used_length, kBlockIdBytes + 1);
  std::vector<uint8_t> expected(kBlockIdBytes, 0);
  std::memcpy(expected.data(), kDiskId, std::strlen(kDiskId));
  EXPECT_EQ(ring_.ReadBytes(id, kBlockIdBytes), expected);
}

TEST_F(VirtioBlockTest, WriteZeroes) {
  StartRaw();
  Completion completion = RangeRequest(VIRTIO_BLK_T_WRITE_ZEROES, 64, 16);
  ASSERT_TRUE(completion.done);
  EXPECT_EQ(completion.status, VIRTIO_BLK_S_OK);
  EXPECT_EQ(ReadSectors(64, 16), std::vector<uint8_t>(16 * 512, 0));
  EXPECT_EQ(ReadSectors(63, 1), Slice(disk_, 63 * 512, 512));
  EXPECT_EQ(ReadSectors(80, 1), Slice(disk_, 80 * 512, 512));
  EXPECT_EQ(
      RangeRequest(VIRTIO_BLK_T_WRITE_ZEROES, 200, 8, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP).status,
      VIRTIO_BLK_S_OK);
  EXPECT_EQ(ReadSectors(200, 8), std::vector<uint8_t>(8 * 512, 0));

  std::vector<uint8_t> expected = disk_;
  std::fill(expected.begin() + 64 * 512, expected.begin() + 80 * 512, 0);
  std::fill(expected.begin() + 200 * 512, expected.begin() + 208 * 512, 0);
  EXPECT_EQ(ReadFile(disk_path_), expected);
}

TEST_F(VirtioBlockTest, Discard) {
  StartRaw();
  Completion completion = RangeRequest(VIRTIO_BLK_T_DISCARD, 256, 256);
  ASSERT_TRUE(completion.done);
  EXPECT_EQ(completion.status, VIRTIO_BLK_S_OK);
  // Discarded data is undefined, but the rest is untouched.
  EXPECT_EQ(ReadSectors(255, 1), Slice(disk_, 255 * 512, 512));
  EXPECT_EQ(ReadSectors(512, 1), Slice(disk_, 512 * 512, 512));
  EXPECT_EQ(RangeRequest(VIRTIO_BLK_T_DISCARD, 0, 8, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP).status,
            VIRTIO_BLK_S_UNSUPP);
  EXPECT_EQ(RangeRequest(VIRTIO_BLK_T_DISCARD, kDiskSectors - 4, 8).status, VIRTIO_BLK_S_IOERR);
}

TEST_F(VirtioBlockTest, UnsupportedRequestThenNextServed) {
  StartRaw();
  Completion completion = Run(14 /* VIRTIO_BLK_T_SECURE_ERASE */, 0);
  ASSERT_TRUE(completion.done);
  EXPECT_EQ(completion.status, VIRTIO_BLK_S_UNSUPP);
  EXPECT_EQ(completion.used_length, 1u);
  uint8_t status = 0xff;
  EXPECT_EQ(ReadSectors(0, 1, &status), Slice(disk_, 0, 512));
  EXPECT_EQ(status, VIRTIO_BLK_S_OK);
  EXPECT_EQ(device_->counters().unsupported_requests, 1u);
}

TEST_F(VirtioBlockTest, LoopingChainIsReturnedAndNextServed) {
  StartRaw();
  const uint64_t header = Header(VIRTIO_BLK_T_IN, 0);
  ring_.SetDescriptor(14, header, 16, VRING_DESC_F_NEXT, 15);
  ring_.SetDescriptor(15, header, 16, VRING_DESC_F_NEXT, 14);
  ring_.MakeAvailable(14);
  ++posted_;
  Kick();
  ASSERT_TRUE(WaitForUsed(posted_));
  EXPECT_EQ(ring_.UsedElement(0).id, 14u);
  EXPECT_EQ(ring_.UsedElement(0).len, 0u);

  uint8_t status = 0xff;
  EXPECT_EQ(ReadSectors(1, 1, &status), Slice(disk_, 512, 512));
  EXPECT_EQ(status, VIRTIO_BLK_S_OK);
  EXPECT_EQ(device_->counters().malformed_chains, 1u);
}

TEST_F(VirtioBlockTest, BufferOutsideRamGetsIoError) {
  StartRaw();
  Completion completion = Run(VIRTIO_BLK_T_IN, 0, {{testing::kTestRamBytes - 256, 512, true}});
  ASSERT_TRUE(completion.done);
  EXPECT_EQ(completion.status, VIRTIO_BLK_S_IOERR);
  EXPECT_EQ(completion.used_length, 0u);
  uint8_t status = 0xff;
  EXPECT_EQ(ReadSectors(2, 1, &status), Slice(disk_, 1024, 512));
  EXPECT_EQ(status, VIRTIO_BLK_S_OK);
}

TEST_F(VirtioBlockTest, ReadOnlyDiskRejectsWrites) {
  StartRaw(/*read_only=*/true);
  const uint64_t features = DeviceFeatures();
  EXPECT_TRUE(features & (uint64_t{1} << VIRTIO_BLK_F_RO));
  EXPECT_FALSE(features & (uint64_t{1} << VIRTIO_BLK_F_DISCARD));
  EXPECT_EQ(WriteSectors(0, Pattern(512, 5)).status, VIRTIO_BLK_S_IOERR);
  // Discard was not negotiated.
  EXPECT_EQ(RangeRequest(VIRTIO_BLK_T_DISCARD, 0, 8).status, VIRTIO_BLK_S_UNSUPP);
  EXPECT_EQ(Run(VIRTIO_BLK_T_FLUSH, 0).status, VIRTIO_BLK_S_OK);
  EXPECT_EQ(ReadSectors(0, 1), Slice(disk_, 0, 512));
  EXPECT_EQ(ReadFile(disk_path_), disk_);
}

TEST_F(VirtioBlockTest, ManyRequestsInFlight) {
  StartRaw();
  // Five requests of three descriptors fill the 16-entry table, and all are
  // posted before one notification.
  std::vector<uint64_t> statuses;
  std::vector<uint64_t> buffers;
  for (uint64_t i = 0; i < 5; ++i) {
    buffers.push_back(ring_.Allocate(4096));
    statuses.push_back(Post(VIRTIO_BLK_T_IN, i * 8, {{buffers.back(), 4096, true}}));
  }
  Kick();
  ASSERT_TRUE(WaitForUsed(posted_));
  for (uint64_t i = 0; i < 5; ++i) {
    EXPECT_EQ(ring_.ReadBytes(statuses[i], 1)[0], VIRTIO_BLK_S_OK);
    EXPECT_EQ(ring_.ReadBytes(buffers[i], 4096), Slice(disk_, i * 4096, 4096));
  }
  // And a long run through the ring, with wrap-around of every index.
  for (uint64_t i = 0; i < 300; ++i) {
    uint8_t status = 0xff;
    const uint64_t sector = (i * 7) % kDiskSectors;
    ASSERT_EQ(ReadSectors(sector, 1, &status), Slice(disk_, sector * 512, 512)) << i;
    ASSERT_EQ(status, VIRTIO_BLK_S_OK);
  }
}

TEST_F(VirtioBlockTest, BrokenAvailableIndexNeedsReset) {
  StartRaw();
  ring_.SetAvailableIndex(kQueueSize + 1);
  Kick();
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (!(Read32(VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_NEEDS_RESET) &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  EXPECT_TRUE(Read32(VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_NEEDS_RESET);
  EXPECT_TRUE(Read32(VIRTIO_MMIO_INTERRUPT_STATUS) & VIRTIO_MMIO_INT_CONFIG);
  EXPECT_EQ(device_->counters().broken_queues, 1u);

  // The driver resets and starts over with a fresh ring.
  ring_.SetAvailableIndex(0);
  ASSERT_TRUE(memory_.WriteObject<uint16_t>(ring_.config().used_ring + 2, 0).ok());
  posted_ = 0;
  StartDriver();
  uint8_t status = 0xff;
  EXPECT_EQ(ReadSectors(3, 1, &status), Slice(disk_, 3 * 512, 512));
  EXPECT_EQ(status, VIRTIO_BLK_S_OK);
}

TEST_F(VirtioBlockTest, QuiescedDeviceTakesNoRequestsUntilResumed) {
  StartRaw();
  const std::vector<uint8_t> data = Pattern(512, 6);
  ASSERT_EQ(WriteSectors(7, data).status, VIRTIO_BLK_S_OK);
  auto state = transport_->Quiesce();
  ASSERT_TRUE(state.ok()) << state.error().message();
  EXPECT_EQ(device_->lifecycle(), DeviceLifecycle::kQuiesced);
  ASSERT_EQ(state->device.queues.size(), 1u);
  EXPECT_EQ(state->device.queues[0].next_available, 1);
  EXPECT_EQ(state->device.queues[0].next_used, 1);

  const uint64_t buffer = ring_.Allocate(512);
  Post(VIRTIO_BLK_T_IN, 7, {{buffer, 512, true}});
  Kick();
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_EQ(ring_.UsedIndex(), 1);
  EXPECT_EQ(device_->backend()->size(), kDiskBytes);

  ASSERT_TRUE(transport_->Resume().ok());
  ASSERT_TRUE(WaitForUsed(2));
  EXPECT_EQ(ring_.ReadBytes(buffer, 512), data);
}

TEST_F(VirtioBlockTest, SaveFailsWhileRunning) {
  StartRaw();
  EXPECT_FALSE(device_->Save().ok());
  EXPECT_FALSE(transport_->Save().ok());
  EXPECT_EQ(device_->ReleaseBackend(), nullptr);
}

TEST_F(VirtioBlockTest, ReplaceBackendChecksSize) {
  StartRaw();
  ASSERT_TRUE(transport_->Quiesce().ok());
  const std::string small = dir_.File("small.raw");
  WriteFile(small, Pattern(4096, 7));
  EXPECT_FALSE(device_->ReplaceBackend(OpenRaw(small)).ok());
  // A copy, because the image lock of the open backend rejects a second open.
  const std::string same_size = dir_.File("same_size.raw");
  WriteFile(same_size, disk_);
  EXPECT_FALSE(device_->ReplaceBackend(OpenRaw(same_size, /*read_only=*/true)).ok());
  ASSERT_TRUE(device_->ReplaceBackend(OpenRaw(same_size)).ok());
  ASSERT_TRUE(transport_->Resume().ok());
  EXPECT_EQ(ReadSectors(0, 1), Slice(disk_, 0, 512));
}

// What a fork child does, in one process: the inherited device and
// transport are abandoned, and a new device over another backend is
// restored from the saved state and goes on from the saved queue indices.
TEST_F(VirtioBlockTest, RebuildFromSavedState) {
  StartRaw();
  const std::vector<uint8_t> data = Pattern(1024, 8);
  ASSERT_EQ(WriteSectors(20, data).status, VIRTIO_BLK_S_OK);
  auto state = transport_->Quiesce();
  ASSERT_TRUE(state.ok()) << state.error().message();

  // A request the parent's device never saw.
  const uint64_t buffer = ring_.Allocate(1024);
  const uint64_t status = Post(VIRTIO_BLK_T_IN, 20, {{buffer, 1024, true}});

  // The child's own disk: a copy of the parent's at the fork.
  const std::string child_disk = dir_.File("child.raw");
  WriteFile(child_disk, ReadFile(disk_path_));

  transport_->AbandonAfterFork();
  std::unique_ptr<block::BlockBackend> inherited = device_->ReleaseBackend();
  ASSERT_NE(inherited, nullptr);
  EXPECT_EQ(device_->lifecycle(), DeviceLifecycle::kAbandoned);
  transport_.reset();
  device_.reset();
  inherited.reset();

  auto irq = std::make_shared<CountingIrq>();
  irq_ = irq;
  CreateDevice(OpenRaw(child_disk));
  ASSERT_TRUE(transport_->Restore(*state).ok());
  EXPECT_EQ(device_->lifecycle(), DeviceLifecycle::kRunning);
  EXPECT_EQ(Read32(VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_DRIVER_OK,
            uint32_t{VIRTIO_CONFIG_S_DRIVER_OK});

  // The worker picks up the pending request without a notification.
  ASSERT_TRUE(WaitForUsed(2));
  EXPECT_EQ(ring_.ReadBytes(status, 1)[0], VIRTIO_BLK_S_OK);
  EXPECT_EQ(ring_.ReadBytes(buffer, 1024), data);
  EXPECT_GT(irq->count, 0);

  // Writes go to the child's disk only.
  const std::vector<uint8_t> child_data = Pattern(512, 9);
  ASSERT_EQ(WriteSectors(30, child_data).status, VIRTIO_BLK_S_OK);
  EXPECT_EQ(Slice(ReadFile(child_disk), 30 * 512, 512), child_data);
  EXPECT_EQ(Slice(ReadFile(disk_path_), 30 * 512, 512), Slice(disk_, 30 * 512, 512));
}

// The same across a real fork(): the child rebuilds its device over its own
// disk copy and serves a request from the inherited (copy-on-write) ring.
TEST_F(VirtioBlockTest, RebuildInForkChild) {
  StartRaw();
  auto state = transport_->Quiesce();
  ASSERT_TRUE(state.ok()) << state.error().message();
  const std::string child_disk = dir_.File("child.raw");
  WriteFile(child_disk, ReadFile(disk_path_));
  const std::vector<uint8_t> child_data = Pattern(512, 10);

  pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    // No gtest assertions here: the exit code reports the result.
    transport_->AbandonAfterFork();
    std::unique_ptr<block::BlockBackend> inherited = device_->ReleaseBackend();
    inherited.reset();
    transport_.reset();
    device_.reset();
    auto backend = block::RawBackend::Open(child_disk, false);
    if (!backend.ok()) _exit(10);
    auto device = VirtioBlock::Create(std::move(backend).value(), {.queue_size = kQueueSize});
    if (!device.ok()) _exit(11);
    auto transport =
        MmioTransport::Create(*device, memory_, kBase, std::make_shared<CountingIrq>(), nullptr);
    if (!transport.ok() || !(*transport)->Restore(*state).ok()) _exit(12);
    transport_ = *transport;
    const Completion completion = WriteSectors(40, child_data);
    if (!completion.done || completion.status != VIRTIO_BLK_S_OK) _exit(13);
    transport_.reset();
    _exit(0);
  }
  int wait_status = 0;
  ASSERT_EQ(waitpid(child, &wait_status, 0), child);
  ASSERT_TRUE(WIFEXITED(wait_status));
  EXPECT_EQ(WEXITSTATUS(wait_status), 0);
  EXPECT_EQ(Slice(ReadFile(child_disk), 40 * 512, 512), child_data);

  // The parent's guest memory and disk did not see the child's request.
  EXPECT_EQ(ring_.UsedIndex(), 0);
  ASSERT_TRUE(transport_->Resume().ok());
  EXPECT_EQ(ReadSectors(40, 1), Slice(disk_, 40 * 512, 512));
}

TEST_F(VirtioBlockTest, Qcow2Backend) {
  const std::string path = dir_.File("disk.qcow2");
  block::CreateImageOptions options;
  options.format = block::ImageFormat::kQcow2;
  options.size = kDiskBytes;
  Status created = block::CreateImage(path, options);
  ASSERT_TRUE(created.ok()) << created.error().message();
  auto opened = block::OpenImage(path, block::ImageFormat::kQcow2);
  ASSERT_TRUE(opened.ok()) << opened.error().message();
  CreateDevice(std::move(opened).value());
  StartDriver();

  EXPECT_EQ(ReadSectors(0, 8), std::vector<uint8_t>(8 * 512, 0));
  const std::vector<uint8_t> data = Pattern(64 * 1024 + 512, 11);
  ASSERT_EQ(WriteSectors(127, data).status, VIRTIO_BLK_S_OK);
  EXPECT_EQ(ReadSectors(127, data.size() / 512), data);
  EXPECT_EQ(ReadSectors(kDiskSectors - 1, 1), std::vector<uint8_t>(512, 0));
  uint8_t status = 0xff;
  ReadSectors(kDiskSectors, 1, &status);
  EXPECT_EQ(status, VIRTIO_BLK_S_IOERR);

  ASSERT_EQ(RangeRequest(VIRTIO_BLK_T_WRITE_ZEROES, 130, 4).status, VIRTIO_BLK_S_OK);
  std::vector<uint8_t> expected = data;
  std::fill(expected.begin() + 3 * 512, expected.begin() + 7 * 512, 0);
  EXPECT_EQ(ReadSectors(127, data.size() / 512), expected);
  EXPECT_EQ(RangeRequest(VIRTIO_BLK_T_DISCARD, 1024, 128).status, VIRTIO_BLK_S_OK);
  EXPECT_EQ(Run(VIRTIO_BLK_T_FLUSH, 0).status, VIRTIO_BLK_S_OK);

  // Reopened, the image contains what was written.
  transport_.reset();
  device_.reset();
  auto reopened = block::OpenImage(path, block::ImageFormat::kQcow2);
  ASSERT_TRUE(reopened.ok()) << reopened.error().message();
  std::vector<uint8_t> stored(expected.size());
  ASSERT_TRUE((*reopened)->Read(127 * 512, stored).ok());
  EXPECT_EQ(stored, expected);
}

}  // namespace
}  // namespace forkvmm::devices::virtio
