#include "devices/bus.h"

#include <gtest/gtest.h>

#include "devices/legacy/i8042.h"

namespace forkvmm::devices {
namespace {

class RecordingDevice : public BusDevice {
 public:
  void Read(uint64_t offset, std::span<uint8_t> data) override {
    last_offset = offset;
    for (auto& byte : data) byte = 0x42;
  }
  void Write(uint64_t offset, std::span<const uint8_t> data) override {
    last_offset = offset;
    last_size = data.size();
  }
  uint64_t last_offset = ~0ull;
  size_t last_size = 0;
};

TEST(Bus, DispatchesWithRelativeOffset) {
  Bus bus("test");
  auto device = std::make_shared<RecordingDevice>();
  ASSERT_TRUE(bus.Register(0x1000, 0x100, device).ok());
  uint8_t data[4] = {1, 2, 3, 4};
  EXPECT_TRUE(bus.Write(0x10fc, data));
  EXPECT_EQ(device->last_offset, 0xfcu);
  EXPECT_EQ(device->last_size, 4u);
  EXPECT_TRUE(bus.Read(0x1000, data));
  EXPECT_EQ(data[0], 0x42);
}

TEST(Bus, AccessCrossingTheEndIsUnclaimed) {
  Bus bus("test");
  ASSERT_TRUE(bus.Register(0x1000, 0x100, std::make_shared<RecordingDevice>()).ok());
  uint8_t data[4] = {};
  EXPECT_FALSE(bus.Write(0x10fd, data));
  EXPECT_FALSE(bus.Read(0x1100, data));
  EXPECT_EQ(data[0], 0xff);
  EXPECT_FALSE(bus.Read(0xfff, {data, 1}));
}

TEST(Bus, OverlapIsRejected) {
  Bus bus("port I/O");
  ASSERT_TRUE(bus.Register(0x3f8, 8, std::make_shared<RecordingDevice>()).ok());
  auto status = bus.Register(0x3ff, 1, std::make_shared<RecordingDevice>());
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.error().message(), "port I/O bus: range 0x3ff+0x1 overlaps 0x3f8+0x8");
  EXPECT_TRUE(bus.Register(0x400, 1, std::make_shared<RecordingDevice>()).ok());
}

TEST(Bus, EmptyOrWrappingRangeIsRejected) {
  Bus bus("test");
  EXPECT_FALSE(bus.Register(0x10, 0, std::make_shared<RecordingDevice>()).ok());
  EXPECT_FALSE(bus.Register(~0ull - 1, 4, std::make_shared<RecordingDevice>()).ok());
}

TEST(I8042, ResetCommandCallsBack) {
  int resets = 0;
  I8042 controller([&resets] { ++resets; });
  uint8_t command = 0xfe;
  controller.Write(4, {&command, 1});
  EXPECT_EQ(resets, 1);
  uint8_t other = 0xad;
  controller.Write(4, {&other, 1});
  controller.Write(0, {&command, 1});
  EXPECT_EQ(resets, 1);
  uint8_t status = 0xff;
  controller.Read(4, {&status, 1});
  EXPECT_EQ(status, 0);
}

}  // namespace
}  // namespace forkvmm::devices
