#include "devices/legacy/serial.h"

namespace forkvmm::devices {
namespace {

// Register offsets from the base port.
constexpr uint64_t kData = 0;  // RBR on read, THR on write; DLL when DLAB=1
constexpr uint64_t kInterruptEnable = 1;  // IER; DLM when DLAB=1
constexpr uint64_t kInterruptId = 2;      // IIR on read, FCR on write
constexpr uint64_t kLineControl = 3;
constexpr uint64_t kModemControl = 4;
constexpr uint64_t kLineStatus = 5;
constexpr uint64_t kModemStatus = 6;
constexpr uint64_t kScratch = 7;

constexpr uint8_t kIerReceivedData = 0x01;
constexpr uint8_t kIerTransmitEmpty = 0x02;
constexpr uint8_t kIirNoInterrupt = 0x01;
constexpr uint8_t kIirTransmitEmpty = 0x02;
constexpr uint8_t kIirReceivedData = 0x04;
constexpr uint8_t kIirFifoEnabled = 0xc0;
constexpr uint8_t kFcrEnable = 0x01;
constexpr uint8_t kFcrClearReceive = 0x02;
constexpr uint8_t kLcrDivisorLatch = 0x80;
constexpr uint8_t kLsrDataReady = 0x01;
constexpr uint8_t kLsrTransmitHoldingEmpty = 0x20;
constexpr uint8_t kLsrTransmitterEmpty = 0x40;
constexpr uint8_t kMcrDtr = 0x01;
constexpr uint8_t kMcrRts = 0x02;
constexpr uint8_t kMcrOut1 = 0x04;
constexpr uint8_t kMcrOut2 = 0x08;
constexpr uint8_t kMcrLoopback = 0x10;
constexpr uint8_t kMsrCts = 0x10;
constexpr uint8_t kMsrDsr = 0x20;
constexpr uint8_t kMsrRi = 0x40;
constexpr uint8_t kMsrDcd = 0x80;

}  // namespace

Serial::Serial(std::shared_ptr<ByteSink> output, std::shared_ptr<IrqLine> irq)
    : output_(std::move(output)), irq_(std::move(irq)) {
  // Out of reset the transmitter is empty but no interrupt is enabled.
  state_.modem_control = kMcrOut2;
}

void Serial::Read(uint64_t offset, std::span<uint8_t> data) {
  if (data.empty()) return;
  std::lock_guard lock(mutex_);
  data[0] = ReadRegister(offset);
  for (size_t i = 1; i < data.size(); ++i) data[i] = 0;
}

void Serial::Write(uint64_t offset, std::span<const uint8_t> data) {
  if (data.empty()) return;
  std::lock_guard lock(mutex_);
  WriteRegister(offset, data[0]);
}

bool Serial::Loopback() const { return (state_.modem_control & kMcrLoopback) != 0; }

uint8_t Serial::ReadRegister(uint64_t offset) {
  bool dlab = (state_.line_control & kLcrDivisorLatch) != 0;
  switch (offset) {
    case kData: {
      if (dlab) return state_.divisor_low;
      if (receive_.empty()) return 0;
      uint8_t byte = receive_.front();
      receive_.pop_front();
      UpdateInterrupt();
      return byte;
    }
    case kInterruptEnable:
      return dlab ? state_.divisor_high : state_.interrupt_enable;
    case kInterruptId: {
      uint8_t id = InterruptIdentification();
      // Reading IIR while it reports THR empty acknowledges that interrupt.
      if ((id & 0x0f) == kIirTransmitEmpty) state_.transmit_interrupt_pending = false;
      return id;
    }
    case kLineControl:
      return state_.line_control;
    case kModemControl:
      return state_.modem_control;
    case kLineStatus:
      return LineStatus();
    case kModemStatus:
      return ModemStatus();
    case kScratch:
      return state_.scratch;
    default:
      return 0xff;
  }
}

void Serial::WriteRegister(uint64_t offset, uint8_t value) {
  bool dlab = (state_.line_control & kLcrDivisorLatch) != 0;
  switch (offset) {
    case kData:
      if (dlab) {
        state_.divisor_low = value;
        return;
      }
      if (Loopback()) {
        if (receive_.size() < kReceiveCapacity) receive_.push_back(value);
      } else if (output_) {
        output_->Write(std::span<const uint8_t>(&value, 1));
      }
      state_.transmit_interrupt_pending = true;
      UpdateInterrupt();
      return;
    case kInterruptEnable:
      if (dlab) {
        state_.divisor_high = value;
        return;
      }
      // Enabling the THR-empty interrupt while THR is empty raises it at once.
      if ((value & kIerTransmitEmpty) && !(state_.interrupt_enable & kIerTransmitEmpty)) {
        state_.transmit_interrupt_pending = true;
      }
      state_.interrupt_enable = value & 0x0f;
      UpdateInterrupt();
      return;
    case kInterruptId:
      state_.fifo_control = value;
      if (value & kFcrClearReceive) receive_.clear();
      return;
    case kLineControl:
      state_.line_control = value;
      return;
    case kModemControl:
      state_.modem_control = value & 0x1f;
      return;
    case kScratch:
      state_.scratch = value;
      return;
    default:
      return;  // LSR and MSR are read-only.
  }
}

uint8_t Serial::InterruptIdentification() const {
  uint8_t fifo = (state_.fifo_control & kFcrEnable) ? kIirFifoEnabled : 0;
  if ((state_.interrupt_enable & kIerReceivedData) && !receive_.empty()) {
    return fifo | kIirReceivedData;
  }
  if ((state_.interrupt_enable & kIerTransmitEmpty) && state_.transmit_interrupt_pending) {
    return fifo | kIirTransmitEmpty;
  }
  return fifo | kIirNoInterrupt;
}

uint8_t Serial::LineStatus() const {
  uint8_t status = kLsrTransmitHoldingEmpty | kLsrTransmitterEmpty;
  if (!receive_.empty()) status |= kLsrDataReady;
  return status;
}

uint8_t Serial::ModemStatus() const {
  if (Loopback()) {
    // In loopback the modem outputs feed the modem inputs (data sheet,
    // MCR bit 4): RTS->CTS, DTR->DSR, OUT1->RI, OUT2->DCD.
    uint8_t mcr = state_.modem_control;
    uint8_t status = 0;
    if (mcr & kMcrRts) status |= kMsrCts;
    if (mcr & kMcrDtr) status |= kMsrDsr;
    if (mcr & kMcrOut1) status |= kMsrRi;
    if (mcr & kMcrOut2) status |= kMsrDcd;
    return status;
  }
  // A connected terminal: carrier detect, data set ready, clear to send.
  return kMsrDcd | kMsrDsr | kMsrCts;
}

void Serial::UpdateInterrupt() {
  if ((InterruptIdentification() & kIirNoInterrupt) == 0 && irq_ && !Loopback()) irq_->Trigger();
}

size_t Serial::EnqueueInput(std::span<const uint8_t> bytes) {
  std::lock_guard lock(mutex_);
  size_t accepted = 0;
  while (accepted < bytes.size() && receive_.size() < kReceiveCapacity) {
    receive_.push_back(bytes[accepted++]);
  }
  if (accepted > 0) UpdateInterrupt();
  return accepted;
}

SerialState Serial::Save() const {
  std::lock_guard lock(mutex_);
  SerialState state = state_;
  state.receive_fifo.assign(receive_.begin(), receive_.end());
  return state;
}

void Serial::Restore(const SerialState& state) {
  std::lock_guard lock(mutex_);
  state_ = state;
  receive_.assign(state.receive_fifo.begin(), state.receive_fifo.end());
  state_.receive_fifo.clear();
}

void Serial::SetOutput(std::shared_ptr<ByteSink> output) {
  std::lock_guard lock(mutex_);
  output_ = std::move(output);
}

void Serial::SetIrq(std::shared_ptr<IrqLine> irq) {
  std::lock_guard lock(mutex_);
  irq_ = std::move(irq);
}

}  // namespace forkvmm::devices
