// A 16550A UART (National Semiconductor PC16550D data sheet), the guest's
// console at I/O port 0x3f8, IRQ 4.
//
// Transmission is instant: a byte written to THR goes straight to the sink,
// so the transmitter is always empty. Received bytes wait in a bounded FIFO
// until the guest reads them.
//
// Thread safety: all methods lock an internal mutex; vCPU threads call
// Read/Write while the console thread calls EnqueueInput.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <vector>

#include "devices/bus.h"

namespace forkvmm::devices {

// The device's register state, for fork and snapshots.
struct SerialState {
  uint8_t interrupt_enable = 0;
  uint8_t line_control = 0;
  uint8_t modem_control = 0;
  uint8_t scratch = 0;
  uint8_t divisor_low = 0;
  uint8_t divisor_high = 0;
  uint8_t fifo_control = 0;
  bool transmit_interrupt_pending = false;
  std::vector<uint8_t> receive_fifo;
};

class Serial : public BusDevice {
 public:
  // Bytes the guest may leave unread before EnqueueInput stops accepting.
  static constexpr size_t kReceiveCapacity = 4096;

  Serial(std::shared_ptr<ByteSink> output, std::shared_ptr<IrqLine> irq);

  void Read(uint64_t offset, std::span<uint8_t> data) override;
  void Write(uint64_t offset, std::span<const uint8_t> data) override;

  // Queues host input for the guest; returns how many bytes were accepted.
  size_t EnqueueInput(std::span<const uint8_t> bytes);

  SerialState Save() const;
  void Restore(const SerialState& state);
  // Replaces the output sink, as a fork child does with its own console.
  void SetOutput(std::shared_ptr<ByteSink> output);
  void SetIrq(std::shared_ptr<IrqLine> irq);

 private:
  uint8_t ReadRegister(uint64_t offset);
  void WriteRegister(uint64_t offset, uint8_t value);
  uint8_t InterruptIdentification() const;
  uint8_t LineStatus() const;
  uint8_t ModemStatus() const;
  bool Loopback() const;
  // Raises the IRQ if an enabled interrupt condition is pending.
  void UpdateInterrupt();

  mutable std::mutex mutex_;
  std::shared_ptr<ByteSink> output_;
  std::shared_ptr<IrqLine> irq_;
  SerialState state_;
  std::deque<uint8_t> receive_;
};

}  // namespace forkvmm::devices
