#include "devices/virtio/mmio_transport.h"

#include <gtest/gtest.h>
#include <linux/virtio_ids.h>
#include <linux/virtio_mmio.h>
#include <poll.h>

#include <cstring>

#include "devices/virtio/mmio_wiring.h"
#include "devices/virtio/test_ring.h"

namespace forkvmm::devices::virtio {
namespace {

constexpr uint64_t kBase = 0xd000'0000;
constexpr uint64_t kFakeFeatureBit = 3;
constexpr uint64_t kFakeFeatures = kVirtqueueFeatures | (uint64_t{1} << kFakeFeatureBit);
constexpr uint32_t kStatusUpToFeatures =
    VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK;

// A device with two queues that records what the transport requests of it.
class FakeDevice : public VirtioDevice {
 public:
  uint32_t device_type() const override { return VIRTIO_ID_RNG; }
  uint64_t device_features() const override { return kFakeFeatures; }
  size_t queue_count() const override { return 2; }
  uint16_t max_queue_size(size_t queue) const override { return queue == 0 ? 16 : 8; }
  void ReadConfig(uint64_t offset, std::span<uint8_t> data) const override {
    std::fill(data.begin(), data.end(), 0);
    for (size_t i = 0; i < data.size() && offset + i < config.size(); ++i) {
      data[i] = config[offset + i];
    }
  }
  void WriteConfig(uint64_t offset, std::span<const uint8_t> data) override {
    config_writes.push_back({offset, data.size()});
  }
  Status Activate(DeviceActivation activation) override {
    ++activations;
    if (!activate_result.ok()) return activate_result;
    last_activation = activation;
    lifecycle_ = DeviceLifecycle::kRunning;
    return Ok();
  }
  void Reset() override {
    ++resets;
    lifecycle_ = DeviceLifecycle::kInactive;
  }
  Result<VirtioDeviceState> Quiesce() override {
    lifecycle_ = DeviceLifecycle::kQuiesced;
    return Save();
  }
  Status Resume() override {
    lifecycle_ = DeviceLifecycle::kRunning;
    return Ok();
  }
  Result<VirtioDeviceState> Save() const override {
    if (lifecycle_ == DeviceLifecycle::kRunning) return Error("running");
    VirtioDeviceState state{.device_type = device_type()};
    if (lifecycle_ == DeviceLifecycle::kQuiesced) {
      state.active = true;
      state.driver_features = last_activation.driver_features;
      state.queues = last_activation.queues;
      state.queues[0].next_available = 5;
      state.queues[0].next_used = 4;
    }
    return state;
  }
  void AbandonAfterFork() override { lifecycle_ = DeviceLifecycle::kAbandoned; }
  DeviceLifecycle lifecycle() const override { return lifecycle_; }

  std::vector<uint8_t> config = {'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h'};
  std::vector<std::pair<uint64_t, size_t>> config_writes;
  Status activate_result;
  DeviceActivation last_activation;
  int activations = 0;
  int resets = 0;

 private:
  DeviceLifecycle lifecycle_ = DeviceLifecycle::kInactive;
};

class CountingIrq : public IrqLine {
 public:
  void Trigger() override { ++count; }
  std::atomic<int> count{0};
};

class RecordingRegistrar : public IoeventfdRegistrar {
 public:
  struct Entry {
    int fd;
    uint64_t address;
    uint32_t length;
    uint64_t datamatch;
  };
  Status Register(int fd, uint64_t address, uint32_t length, uint64_t datamatch) override {
    registered.push_back({fd, address, length, datamatch});
    return Ok();
  }
  Status Unregister(int fd, uint64_t address, uint32_t length, uint64_t datamatch) override {
    unregistered.push_back({fd, address, length, datamatch});
    return Ok();
  }
  std::vector<Entry> registered;
  std::vector<Entry> unregistered;
};

bool Readable(int fd) {
  pollfd entry{fd, POLLIN, 0};
  return poll(&entry, 1, 0) == 1;
}

class MmioTransportTest : public ::testing::Test {
 protected:
  void SetUp() override { transport_ = MakeTransport(device_, nullptr); }

  std::shared_ptr<MmioTransport> MakeTransport(std::shared_ptr<FakeDevice> device,
                                               std::shared_ptr<IoeventfdRegistrar> registrar) {
    auto created = MmioTransport::Create(device, memory_, kBase, irq_, registrar);
    EXPECT_TRUE(created.ok()) << created.error().message();
    return std::move(created).value();
  }

  uint32_t Read32(uint64_t offset, MmioTransport* transport = nullptr) {
    uint32_t value = 0;
    (transport ? transport : transport_.get())
        ->Read(offset, {reinterpret_cast<uint8_t*>(&value), 4});
    return value;
  }
  void Write32(uint64_t offset, uint32_t value) {
    transport_->Write(offset, {reinterpret_cast<const uint8_t*>(&value), 4});
  }
  uint32_t DeviceFeatures(uint32_t select) {
    Write32(VIRTIO_MMIO_DEVICE_FEATURES_SEL, select);
    return Read32(VIRTIO_MMIO_DEVICE_FEATURES);
  }
  void WriteDriverFeatures(uint64_t features) {
    Write32(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
    Write32(VIRTIO_MMIO_DRIVER_FEATURES, static_cast<uint32_t>(features));
    Write32(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    Write32(VIRTIO_MMIO_DRIVER_FEATURES, static_cast<uint32_t>(features >> 32));
  }
  // Runs the driver's side of initialization up to FEATURES_OK and returns
  // the status the device shows afterwards.
  uint32_t Negotiate(uint64_t features) {
    Write32(VIRTIO_MMIO_STATUS, 0);
    Write32(VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
    Write32(VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER);
    WriteDriverFeatures(features);
    Write32(VIRTIO_MMIO_STATUS, kStatusUpToFeatures);
    return Read32(VIRTIO_MMIO_STATUS);
  }
  void SetUpQueue(uint32_t index, const VirtqueueConfig& config) {
    Write32(VIRTIO_MMIO_QUEUE_SEL, index);
    EXPECT_EQ(Read32(VIRTIO_MMIO_QUEUE_READY), 0u);
    Write32(VIRTIO_MMIO_QUEUE_NUM, config.size);
    Write32(VIRTIO_MMIO_QUEUE_DESC_LOW, static_cast<uint32_t>(config.descriptor_table));
    Write32(VIRTIO_MMIO_QUEUE_DESC_HIGH, static_cast<uint32_t>(config.descriptor_table >> 32));
    Write32(VIRTIO_MMIO_QUEUE_AVAIL_LOW, static_cast<uint32_t>(config.available_ring));
    Write32(VIRTIO_MMIO_QUEUE_AVAIL_HIGH, static_cast<uint32_t>(config.available_ring >> 32));
    Write32(VIRTIO_MMIO_QUEUE_USED_LOW, static_cast<uint32_t>(config.used_ring));
    Write32(VIRTIO_MMIO_QUEUE_USED_HIGH, static_cast<uint32_t>(config.used_ring >> 32));
    Write32(VIRTIO_MMIO_QUEUE_READY, 1);
  }
  // Negotiates, sets up queue 0 and sets DRIVER_OK.
  void Activate() {
    ASSERT_EQ(Negotiate(kFakeFeatures), kStatusUpToFeatures);
    SetUpQueue(0, queue0_);
    Write32(VIRTIO_MMIO_STATUS, kStatusUpToFeatures | VIRTIO_CONFIG_S_DRIVER_OK);
  }

  memory::GuestMemory memory_ = testing::MakeTestMemory();
  std::shared_ptr<FakeDevice> device_ = std::make_shared<FakeDevice>();
  std::shared_ptr<CountingIrq> irq_ = std::make_shared<CountingIrq>();
  std::shared_ptr<MmioTransport> transport_;
  VirtqueueConfig queue0_{.size = 16,
                          .ready = true,
                          .descriptor_table = 0x1'2345'0000,
                          .available_ring = 0x20000,
                          .used_ring = 0x30000};
};

TEST_F(MmioTransportTest, IdentifiesAsVersion2Device) {
  EXPECT_EQ(Read32(VIRTIO_MMIO_MAGIC_VALUE), 0x74726976u);
  EXPECT_EQ(Read32(VIRTIO_MMIO_VERSION), 2u);
  EXPECT_EQ(Read32(VIRTIO_MMIO_DEVICE_ID), uint32_t{VIRTIO_ID_RNG});
  EXPECT_NE(Read32(VIRTIO_MMIO_VENDOR_ID), 0u);
  EXPECT_EQ(Read32(VIRTIO_MMIO_STATUS), 0u);
  EXPECT_EQ(Read32(VIRTIO_MMIO_CONFIG_GENERATION), 0u);
}

TEST_F(MmioTransportTest, DeviceFeaturesByWord) {
  EXPECT_EQ(DeviceFeatures(0), static_cast<uint32_t>(kFakeFeatures));
  EXPECT_EQ(DeviceFeatures(1), static_cast<uint32_t>(kFakeFeatures >> 32));
  EXPECT_EQ(DeviceFeatures(2), 0u);
}

TEST_F(MmioTransportTest, NegotiationAcceptsOfferedSubset) {
  const uint64_t features = uint64_t{1} << VIRTIO_F_VERSION_1;
  EXPECT_EQ(Negotiate(features), kStatusUpToFeatures);
  EXPECT_EQ(transport_->counters().invalid_accesses, 0u);
}

TEST_F(MmioTransportTest, NegotiationRefusesUnofferedFeature) {
  EXPECT_EQ(Negotiate(kFakeFeatures | (uint64_t{1} << 7)),
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER);
  EXPECT_EQ(transport_->counters().invalid_accesses, 1u);
}

TEST_F(MmioTransportTest, NegotiationRequiresVersion1) {
  EXPECT_EQ(Negotiate(uint64_t{1} << kFakeFeatureBit),
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER);
}

TEST_F(MmioTransportTest, FeaturesFrozenAfterFeaturesOk) {
  ASSERT_EQ(Negotiate(uint64_t{1} << VIRTIO_F_VERSION_1), kStatusUpToFeatures);
  WriteDriverFeatures(kFakeFeatures);
  Write32(VIRTIO_MMIO_QUEUE_SEL, 0);
  SetUpQueue(0, queue0_);
  Write32(VIRTIO_MMIO_STATUS, kStatusUpToFeatures | VIRTIO_CONFIG_S_DRIVER_OK);
  EXPECT_EQ(device_->last_activation.driver_features, uint64_t{1} << VIRTIO_F_VERSION_1);
}

TEST_F(MmioTransportTest, QueueRegisters) {
  Write32(VIRTIO_MMIO_QUEUE_SEL, 0);
  EXPECT_EQ(Read32(VIRTIO_MMIO_QUEUE_NUM_MAX), 16u);
  Write32(VIRTIO_MMIO_QUEUE_SEL, 1);
  EXPECT_EQ(Read32(VIRTIO_MMIO_QUEUE_NUM_MAX), 8u);
  Write32(VIRTIO_MMIO_QUEUE_SEL, 2);
  EXPECT_EQ(Read32(VIRTIO_MMIO_QUEUE_NUM_MAX), 0u);
  EXPECT_EQ(Read32(VIRTIO_MMIO_QUEUE_READY), 0u);
  Write32(VIRTIO_MMIO_QUEUE_READY, 1);  // no such queue
  EXPECT_EQ(Read32(VIRTIO_MMIO_QUEUE_READY), 0u);
  EXPECT_EQ(transport_->counters().invalid_accesses, 1u);
}

TEST_F(MmioTransportTest, DriverOkActivatesDeviceWithQueues) {
  Activate();
  ASSERT_EQ(device_->activations, 1);
  EXPECT_EQ(Read32(VIRTIO_MMIO_STATUS), kStatusUpToFeatures | VIRTIO_CONFIG_S_DRIVER_OK);
  const DeviceActivation& activation = device_->last_activation;
  EXPECT_EQ(activation.memory, &memory_);
  EXPECT_EQ(activation.driver_features, kFakeFeatures);
  ASSERT_EQ(activation.queues.size(), 2u);
  EXPECT_EQ(activation.queues[0].config, queue0_);
  EXPECT_EQ(activation.queues[0].next_available, 0);
  EXPECT_FALSE(activation.queues[1].config.ready);
  ASSERT_EQ(activation.notify_fds.size(), 2u);
  EXPECT_TRUE(activation.interrupt);
}

TEST_F(MmioTransportTest, DriverOkBeforeFeaturesOkIsIgnored) {
  Write32(VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER);
  Write32(VIRTIO_MMIO_STATUS,
          VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_DRIVER_OK);
  EXPECT_EQ(device_->activations, 0);
  EXPECT_EQ(Read32(VIRTIO_MMIO_STATUS), VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER);
}

TEST_F(MmioTransportTest, ClearingStatusBitsNeedsReset) {
  ASSERT_EQ(Negotiate(kFakeFeatures), kStatusUpToFeatures);
  Write32(VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
  EXPECT_EQ(Read32(VIRTIO_MMIO_STATUS), kStatusUpToFeatures);
}

TEST_F(MmioTransportTest, FailedActivationSetsNeedsReset) {
  device_->activate_result = Error("queue 0 is not ready");
  Activate();
  EXPECT_EQ(device_->activations, 1);
  EXPECT_EQ(Read32(VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_NEEDS_RESET,
            uint32_t{VIRTIO_CONFIG_S_NEEDS_RESET});
  EXPECT_EQ(Read32(VIRTIO_MMIO_INTERRUPT_STATUS), uint32_t{VIRTIO_MMIO_INT_CONFIG});
  EXPECT_EQ(irq_->count, 1);
  EXPECT_EQ(transport_->counters().activation_failures, 1u);
  // A reset clears it.
  Write32(VIRTIO_MMIO_STATUS, 0);
  EXPECT_EQ(Read32(VIRTIO_MMIO_STATUS), 0u);
  EXPECT_EQ(Read32(VIRTIO_MMIO_INTERRUPT_STATUS), 0u);
}

TEST_F(MmioTransportTest, InterruptStatusAndAcknowledge) {
  Activate();
  device_->last_activation.interrupt->NotifyUsedBuffers();
  EXPECT_EQ(irq_->count, 1);
  EXPECT_EQ(Read32(VIRTIO_MMIO_INTERRUPT_STATUS), uint32_t{VIRTIO_MMIO_INT_VRING});
  device_->last_activation.interrupt->NotifyConfigChange();
  EXPECT_EQ(irq_->count, 2);
  EXPECT_EQ(Read32(VIRTIO_MMIO_INTERRUPT_STATUS),
            uint32_t{VIRTIO_MMIO_INT_VRING | VIRTIO_MMIO_INT_CONFIG});
  Write32(VIRTIO_MMIO_INTERRUPT_ACK, VIRTIO_MMIO_INT_VRING);
  EXPECT_EQ(Read32(VIRTIO_MMIO_INTERRUPT_STATUS), uint32_t{VIRTIO_MMIO_INT_CONFIG});
  Write32(VIRTIO_MMIO_INTERRUPT_ACK, VIRTIO_MMIO_INT_CONFIG);
  EXPECT_EQ(Read32(VIRTIO_MMIO_INTERRUPT_STATUS), 0u);
}

TEST_F(MmioTransportTest, QueueNotifySignalsEventfd) {
  Activate();
  const std::vector<int> fds = device_->last_activation.notify_fds;
  EXPECT_FALSE(Readable(fds[0]));
  Write32(VIRTIO_MMIO_QUEUE_NOTIFY, 1);
  EXPECT_FALSE(Readable(fds[0]));
  EXPECT_TRUE(Readable(fds[1]));
  Write32(VIRTIO_MMIO_QUEUE_NOTIFY, 0);
  EXPECT_TRUE(Readable(fds[0]));
  Write32(VIRTIO_MMIO_QUEUE_NOTIFY, 7);
  EXPECT_EQ(transport_->counters().invalid_accesses, 1u);
}

TEST_F(MmioTransportTest, QueueLockedWhileReady) {
  ASSERT_EQ(Negotiate(kFakeFeatures), kStatusUpToFeatures);
  SetUpQueue(0, queue0_);
  Write32(VIRTIO_MMIO_QUEUE_NUM, 4);
  Write32(VIRTIO_MMIO_QUEUE_DESC_LOW, 0);
  EXPECT_EQ(transport_->counters().invalid_accesses, 2u);
  Write32(VIRTIO_MMIO_STATUS, kStatusUpToFeatures | VIRTIO_CONFIG_S_DRIVER_OK);
  EXPECT_EQ(device_->last_activation.queues[0].config, queue0_);
  // Clearing QueueReady of an active device is not supported.
  Write32(VIRTIO_MMIO_QUEUE_READY, 0);
  EXPECT_EQ(Read32(VIRTIO_MMIO_QUEUE_READY), 1u);
}

TEST_F(MmioTransportTest, ResetClearsEverything) {
  Activate();
  device_->last_activation.interrupt->NotifyUsedBuffers();
  Write32(VIRTIO_MMIO_STATUS, 0);
  EXPECT_EQ(device_->resets, 1);
  EXPECT_EQ(device_->lifecycle(), DeviceLifecycle::kInactive);
  EXPECT_EQ(Read32(VIRTIO_MMIO_STATUS), 0u);
  EXPECT_EQ(Read32(VIRTIO_MMIO_INTERRUPT_STATUS), 0u);
  Write32(VIRTIO_MMIO_QUEUE_SEL, 0);
  EXPECT_EQ(Read32(VIRTIO_MMIO_QUEUE_READY), 0u);
  // The driver can start over.
  Activate();
  EXPECT_EQ(device_->activations, 2);
}

TEST_F(MmioTransportTest, WrongWidthAccessesAreIgnored) {
  uint8_t byte = 0xff;
  transport_->Read(VIRTIO_MMIO_MAGIC_VALUE, {&byte, 1});
  EXPECT_EQ(byte, 0);
  uint16_t half = 0;
  transport_->Write(VIRTIO_MMIO_STATUS, {reinterpret_cast<const uint8_t*>(&half), 2});
  uint32_t value = VIRTIO_CONFIG_S_ACKNOWLEDGE;
  transport_->Write(VIRTIO_MMIO_STATUS + 1, {reinterpret_cast<const uint8_t*>(&value), 4});
  EXPECT_EQ(Read32(VIRTIO_MMIO_STATUS), 0u);
  Write32(VIRTIO_MMIO_MAGIC_VALUE, 1);  // read-only
  EXPECT_EQ(transport_->counters().invalid_accesses, 4u);
}

TEST_F(MmioTransportTest, ConfigSpaceAnyWidth) {
  uint8_t byte = 0;
  transport_->Read(VIRTIO_MMIO_CONFIG + 2, {&byte, 1});
  EXPECT_EQ(byte, 'c');
  uint32_t word = 0;
  transport_->Read(VIRTIO_MMIO_CONFIG + 4, {reinterpret_cast<uint8_t*>(&word), 4});
  EXPECT_EQ(std::memcmp(&word, "efgh", 4), 0);
  uint64_t past = 0xffff;
  transport_->Read(VIRTIO_MMIO_CONFIG + 6, {reinterpret_cast<uint8_t*>(&past), 8});
  EXPECT_EQ(past, uint64_t{'g'} | uint64_t{'h'} << 8);
  transport_->Write(VIRTIO_MMIO_CONFIG + 1, {&byte, 1});
  ASSERT_EQ(device_->config_writes.size(), 1u);
  EXPECT_EQ(device_->config_writes[0].first, 1u);
}

TEST_F(MmioTransportTest, SharedMemoryReadsAsAbsent) {
  Write32(VIRTIO_MMIO_SHM_SEL, 0);
  EXPECT_EQ(Read32(VIRTIO_MMIO_SHM_LEN_LOW), 0xffffffffu);
  EXPECT_EQ(Read32(VIRTIO_MMIO_SHM_BASE_HIGH), 0xffffffffu);
}

TEST_F(MmioTransportTest, RegistersIoeventfdPerQueue) {
  auto registrar = std::make_shared<RecordingRegistrar>();
  auto device = std::make_shared<FakeDevice>();
  auto transport = MakeTransport(device, registrar);
  ASSERT_EQ(registrar->registered.size(), 2u);
  for (uint64_t queue = 0; queue < 2; ++queue) {
    EXPECT_EQ(registrar->registered[queue].address, kBase + MmioTransport::kQueueNotifyOffset);
    EXPECT_EQ(registrar->registered[queue].length, 4u);
    EXPECT_EQ(registrar->registered[queue].datamatch, queue);
  }
  EXPECT_NE(registrar->registered[0].fd, registrar->registered[1].fd);
  transport.reset();
  ASSERT_EQ(registrar->unregistered.size(), 2u);
  EXPECT_EQ(registrar->unregistered[1].fd, registrar->registered[1].fd);
  EXPECT_EQ(registrar->unregistered[1].datamatch, 1u);
}

TEST_F(MmioTransportTest, AbandonedTransportLeavesRegistrations) {
  auto registrar = std::make_shared<RecordingRegistrar>();
  auto device = std::make_shared<FakeDevice>();
  auto transport = MakeTransport(device, registrar);
  transport->AbandonAfterFork();
  EXPECT_EQ(device->lifecycle(), DeviceLifecycle::kAbandoned);
  transport.reset();
  EXPECT_TRUE(registrar->unregistered.empty());
  EXPECT_EQ(device->resets, 0);
}

TEST_F(MmioTransportTest, SaveFailsWhileDeviceRuns) {
  Activate();
  EXPECT_FALSE(transport_->Save().ok());
}

TEST_F(MmioTransportTest, QuiesceAndRestoreRoundTrip) {
  Activate();
  Write32(VIRTIO_MMIO_QUEUE_SEL, 1);
  device_->last_activation.interrupt->NotifyUsedBuffers();
  auto saved = transport_->Quiesce();
  ASSERT_TRUE(saved.ok()) << saved.error().message();
  EXPECT_EQ(saved->status, kStatusUpToFeatures | VIRTIO_CONFIG_S_DRIVER_OK);
  EXPECT_EQ(saved->driver_features, kFakeFeatures);
  EXPECT_EQ(saved->queue_select, 1u);
  EXPECT_EQ(saved->interrupt_status, uint32_t{VIRTIO_MMIO_INT_VRING});
  ASSERT_EQ(saved->queues.size(), 2u);
  EXPECT_EQ(saved->queues[0], queue0_);
  EXPECT_TRUE(saved->device.active);
  ASSERT_EQ(saved->device.queues.size(), 2u);
  EXPECT_EQ(saved->device.queues[0].next_available, 5);

  // As a fork child does: a new device and transport, restored.
  auto device = std::make_shared<FakeDevice>();
  auto irq = std::make_shared<CountingIrq>();
  auto restored_transport = MmioTransport::Create(device, memory_, kBase, irq, nullptr);
  ASSERT_TRUE(restored_transport.ok());
  MmioTransport& restored = **restored_transport;
  ASSERT_TRUE(restored.Restore(*saved).ok());
  EXPECT_EQ(device->activations, 1);
  EXPECT_EQ(device->last_activation.queues, saved->device.queues);
  EXPECT_EQ(device->last_activation.driver_features, kFakeFeatures);
  EXPECT_EQ(Read32(VIRTIO_MMIO_STATUS, &restored), saved->status);
  EXPECT_EQ(Read32(VIRTIO_MMIO_INTERRUPT_STATUS, &restored), uint32_t{VIRTIO_MMIO_INT_VRING});
  EXPECT_EQ(Read32(VIRTIO_MMIO_QUEUE_READY, &restored), 0u);  // queue 1 is selected
  // The unacknowledged interrupt is sent again.
  EXPECT_EQ(irq->count, 1);

  auto again = restored.Quiesce();
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*again, *saved);
  // A transport in use refuses another restore.
  EXPECT_FALSE(restored.Restore(*saved).ok());
}

TEST_F(MmioTransportTest, RestoreRejectsMismatchedState) {
  Activate();
  auto saved = transport_->Quiesce();
  ASSERT_TRUE(saved.ok());
  MmioTransportState wrong = *saved;
  wrong.queues.pop_back();
  auto other = MakeTransport(std::make_shared<FakeDevice>(), nullptr);
  EXPECT_FALSE(other->Restore(wrong).ok());
  wrong = *saved;
  wrong.device.device_type = VIRTIO_ID_BLOCK;
  EXPECT_FALSE(other->Restore(wrong).ok());
  wrong = *saved;
  wrong.driver_features |= uint64_t{1} << 40;
  EXPECT_FALSE(other->Restore(wrong).ok());
  EXPECT_EQ(Read32(VIRTIO_MMIO_STATUS, other.get()), 0u);
  EXPECT_TRUE(other->Restore(*saved).ok());
}

TEST(VirtioMmioWiringTest, SlotsAndKernelParameters) {
  auto first = VirtioMmioSlotAt(0);
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(first->base, 0xd000'0000u);
  EXPECT_EQ(first->gsi, 5u);
  EXPECT_EQ(VirtioMmioKernelParameter(*first), "virtio_mmio.device=4K@0xd0000000:5");
  auto third = VirtioMmioSlotAt(2);
  ASSERT_TRUE(third.ok());
  EXPECT_EQ(VirtioMmioKernelParameter(*third), "virtio_mmio.device=4K@0xd0002000:7");
  EXPECT_TRUE(VirtioMmioSlotAt(kMaxVirtioMmioDevices - 1).ok());
  EXPECT_EQ(VirtioMmioSlotAt(kMaxVirtioMmioDevices - 1)->gsi, 15u);
  EXPECT_FALSE(VirtioMmioSlotAt(kMaxVirtioMmioDevices).ok());
}

TEST(VirtioMmioWiringTest, AttachRegistersWindowOnBus) {
  memory::GuestMemory memory = testing::MakeTestMemory();
  Bus bus("MMIO");
  auto slot = VirtioMmioSlotAt(1);
  ASSERT_TRUE(slot.ok());
  auto attached = AttachVirtioMmioDevice(bus, *slot, std::make_shared<FakeDevice>(), memory,
                                         std::make_shared<CountingIrq>(), nullptr);
  ASSERT_TRUE(attached.ok()) << attached.error().message();
  uint32_t magic = 0;
  EXPECT_TRUE(bus.Read(slot->base, {reinterpret_cast<uint8_t*>(&magic), 4}));
  EXPECT_EQ(magic, 0x74726976u);
  EXPECT_TRUE(bus.Read(slot->base + 0xffc, {reinterpret_cast<uint8_t*>(&magic), 4}));
  EXPECT_FALSE(bus.Read(slot->base + 0x1000, {reinterpret_cast<uint8_t*>(&magic), 4}));
  // The same slot cannot be taken twice.
  EXPECT_FALSE(AttachVirtioMmioDevice(bus, *slot, std::make_shared<FakeDevice>(), memory,
                                      std::make_shared<CountingIrq>(), nullptr)
                   .ok());
}

}  // namespace
}  // namespace forkvmm::devices::virtio
