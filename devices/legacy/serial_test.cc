#include "devices/legacy/serial.h"

#include <gtest/gtest.h>

#include <string>

namespace forkvmm::devices {
namespace {

class StringSink : public ByteSink {
 public:
  void Write(std::span<const uint8_t> bytes) override { text.append(bytes.begin(), bytes.end()); }
  std::string text;
};

class CountingIrq : public IrqLine {
 public:
  void Trigger() override { ++count; }
  int count = 0;
};

class SerialTest : public ::testing::Test {
 protected:
  uint8_t ReadReg(uint64_t offset) {
    uint8_t value = 0;
    serial_.Read(offset, {&value, 1});
    return value;
  }
  void WriteReg(uint64_t offset, uint8_t value) { serial_.Write(offset, {&value, 1}); }

  std::shared_ptr<StringSink> sink_ = std::make_shared<StringSink>();
  std::shared_ptr<CountingIrq> irq_ = std::make_shared<CountingIrq>();
  Serial serial_{sink_, irq_};
};

TEST_F(SerialTest, TransmitGoesToSink) {
  for (char c : std::string("abc")) WriteReg(0, static_cast<uint8_t>(c));
  EXPECT_EQ(sink_->text, "abc");
  // Transmitter always empty: THRE and TEMT set.
  EXPECT_EQ(ReadReg(5) & 0x60, 0x60);
}

TEST_F(SerialTest, NoInterruptUntilEnabled) {
  WriteReg(0, 'x');
  EXPECT_EQ(irq_->count, 0);
  EXPECT_EQ(ReadReg(2) & 0x0f, 0x01);
}

TEST_F(SerialTest, EnablingTransmitInterruptRaisesIt) {
  WriteReg(1, 0x02);
  EXPECT_EQ(irq_->count, 1);
  EXPECT_EQ(ReadReg(2) & 0x0f, 0x02);
  // Reading IIR acknowledged it.
  EXPECT_EQ(ReadReg(2) & 0x0f, 0x01);
  WriteReg(0, 'y');
  EXPECT_EQ(irq_->count, 2);
}

TEST_F(SerialTest, ReceivedDataIsReadInOrder) {
  WriteReg(1, 0x01);
  uint8_t input[] = {'h', 'i'};
  EXPECT_EQ(serial_.EnqueueInput(input), 2u);
  EXPECT_EQ(irq_->count, 1);
  EXPECT_EQ(ReadReg(5) & 0x01, 0x01);
  EXPECT_EQ(ReadReg(2) & 0x0f, 0x04);
  EXPECT_EQ(ReadReg(0), 'h');
  EXPECT_EQ(ReadReg(0), 'i');
  EXPECT_EQ(ReadReg(5) & 0x01, 0x00);
  EXPECT_EQ(ReadReg(2) & 0x0f, 0x01);
}

TEST_F(SerialTest, ReceiveFifoIsBounded) {
  std::vector<uint8_t> input(Serial::kReceiveCapacity + 10, 'z');
  EXPECT_EQ(serial_.EnqueueInput(input), Serial::kReceiveCapacity);
  uint8_t more = 'q';
  EXPECT_EQ(serial_.EnqueueInput({&more, 1}), 0u);
}

TEST_F(SerialTest, DivisorLatchSwapsRegisters) {
  WriteReg(3, 0x80);  // DLAB
  WriteReg(0, 0x0c);
  WriteReg(1, 0x01);
  EXPECT_EQ(ReadReg(0), 0x0c);
  EXPECT_EQ(ReadReg(1), 0x01);
  WriteReg(3, 0x03);
  EXPECT_EQ(ReadReg(1), 0x00);  // IER untouched
  EXPECT_EQ(sink_->text, "");
}

TEST_F(SerialTest, LoopbackEchoesAndMirrorsModemLines) {
  // The Linux 8250 probe: loopback with OUT2 and RTS set reads back DCD|CTS.
  WriteReg(4, 0x10 | 0x0a);
  EXPECT_EQ(ReadReg(6) & 0xf0, 0x90);
  WriteReg(0, 'L');
  EXPECT_EQ(sink_->text, "");
  EXPECT_EQ(ReadReg(0), 'L');
}

TEST_F(SerialTest, ScratchRegisterHoldsValue) {
  WriteReg(7, 0x5a);
  EXPECT_EQ(ReadReg(7), 0x5a);
}

TEST_F(SerialTest, SaveRestoreRoundTrip) {
  WriteReg(1, 0x01);
  WriteReg(7, 0x33);
  uint8_t input[] = {'a', 'b'};
  serial_.EnqueueInput(input);
  SerialState state = serial_.Save();
  Serial copy(sink_, irq_);
  copy.Restore(state);
  uint8_t value = 0;
  copy.Read(7, {&value, 1});
  EXPECT_EQ(value, 0x33);
  copy.Read(0, {&value, 1});
  EXPECT_EQ(value, 'a');
  copy.Read(1, {&value, 1});
  EXPECT_EQ(value, 0x01);
}

}  // namespace
}  // namespace forkvmm::devices
