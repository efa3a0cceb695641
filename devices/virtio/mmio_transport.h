// The virtio-mmio transport, version 2 (virtio 1.2 §4.2): the register
// window through which a driver discovers, negotiates with and drives one
// virtio device.
//
// The transport owns a VirtioDevice. It handles register accesses from the
// MMIO bus, negotiates features and device status with the driver, collects
// queue configurations, and activates the device when the driver sets
// DRIVER_OK. Queue notifications reach the device through one eventfd per
// queue: with an IoeventfdRegistrar, KVM signals the eventfd directly on a
// guest write to QueueNotify (no exit to userspace); without one, or for a
// value KVM did not match, Write() signals it. Interrupts go out through an
// IrqLine (an edge-triggered irqfd in a VM), with InterruptStatus and
// InterruptACK telling the driver why.
//
// Every register value is guest-controlled. Accesses of the wrong width,
// writes to read-only registers, queue changes while a queue is ready and
// out-of-order status changes are ignored, counted and logged at a limited
// rate. Feature sets the device does not offer, or without
// VIRTIO_F_VERSION_1, are refused by leaving FEATURES_OK clear.
//
// Not implemented: VIRTIO_F_NOTIFICATION_DATA, VIRTIO_F_RING_RESET (the
// QueueReset register reads 0) and shared memory regions (SHMLen and
// SHMBase read as "no region").
//
// Thread safety: Read and Write come from vCPU threads and take an internal
// mutex; so do the control methods (Quiesce, Resume, Save, Restore,
// AbandonAfterFork). The device's worker threads only touch the interrupt
// state, which is atomic.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <vector>

#include "devices/bus.h"
#include "devices/virtio/device.h"
#include "memory/guest_memory.h"
#include "vmm/base/log.h"
#include "vmm/base/result.h"
#include "vmm/base/unique_fd.h"

namespace forkvmm::devices::virtio {

// Registers eventfds that KVM signals on guest MMIO writes (KVM_IOEVENTFD).
// The VM implements it with KvmVm, and tests pass nullptr or a fake.
class IoeventfdRegistrar {
 public:
  virtual ~IoeventfdRegistrar() = default;
  // Makes a guest write of `length` bytes with value `datamatch` to MMIO
  // `address` signal `event_fd` instead of exiting to userspace.
  virtual Status Register(int event_fd, uint64_t address, uint32_t length, uint64_t datamatch) = 0;
  virtual Status Unregister(int event_fd, uint64_t address, uint32_t length,
                            uint64_t datamatch) = 0;
};

// The transport's registers and its device's state, for snapshots and fork.
struct MmioTransportState {
  uint32_t status = 0;
  uint32_t device_features_select = 0;
  uint32_t driver_features_select = 0;
  uint64_t driver_features = 0;
  uint32_t queue_select = 0;
  uint32_t interrupt_status = 0;
  // DEVICE_NEEDS_RESET, which the device sets and only a reset clears.
  bool needs_reset = false;
  uint32_t config_generation = 0;
  // The queue registers, one entry per queue of the device.
  std::vector<VirtqueueConfig> queues;
  VirtioDeviceState device;

  bool operator==(const MmioTransportState&) const = default;
};

struct MmioTransportCounters {
  // Register accesses the transport ignored (see the file comment).
  uint64_t invalid_accesses = 0;
  // DRIVER_OK writes that failed to activate the device.
  uint64_t activation_failures = 0;
};

class MmioInterrupt;

class MmioTransport : public BusDevice {
 public:
  // The size of a device's register window on the MMIO bus.
  static constexpr uint64_t kWindowSize = 0x1000;
  // Offset of the QueueNotify register, where ioeventfds are registered.
  static constexpr uint64_t kQueueNotifyOffset = 0x050;

  // Builds a transport for `device` whose window starts at guest-physical
  // `base_address`. `memory` must outlive the transport. `irq` receives the
  // device's interrupts. `ioeventfds` may be null. When it is set, one
  // eventfd per queue is registered for QueueNotify with the queue index as
  // datamatch.
  static Result<std::shared_ptr<MmioTransport>> Create(
      std::shared_ptr<VirtioDevice> device, memory::GuestMemory& memory, uint64_t base_address,
      std::shared_ptr<IrqLine> irq, std::shared_ptr<IoeventfdRegistrar> ioeventfds);

  // Resets the device (completing its requests in flight) and unregisters
  // the ioeventfds, unless AbandonAfterFork() ran.
  ~MmioTransport() override;
  MmioTransport(const MmioTransport&) = delete;
  MmioTransport& operator=(const MmioTransport&) = delete;

  void Read(uint64_t offset, std::span<uint8_t> data) override;
  void Write(uint64_t offset, std::span<const uint8_t> data) override;

  // Quiesces the device (see VirtioDevice::Quiesce) and returns the whole
  // state. The caller pauses the vCPUs first so the registers stay put.
  Result<MmioTransportState> Quiesce();
  // Continues after Quiesce().
  Status Resume();
  // Returns the whole state, and fails while the device runs.
  Result<MmioTransportState> Save() const;
  // Loads `state` into a transport that the driver has not touched since
  // Create(), and restarts the device from its saved queues if it was
  // active. Fails, changing nothing, if the state does not fit the device.
  Status Restore(const MmioTransportState& state);

  // In a fork child: abandons the device (see
  // VirtioDevice::AbandonAfterFork), closes the inherited eventfds without
  // unregistering them (the registrations belong to the parent's VM) and
  // drops the interrupt line. Afterwards the transport may only be
  // destroyed.
  void AbandonAfterFork();

  uint64_t base_address() const { return base_address_; }
  VirtioDevice& device() { return *device_; }
  MmioTransportCounters counters() const;

 private:
  MmioTransport(std::shared_ptr<VirtioDevice> device, memory::GuestMemory& memory,
                uint64_t base_address, std::shared_ptr<MmioInterrupt> interrupt,
                std::shared_ptr<IoeventfdRegistrar> ioeventfds);

  Status CreateNotifyFds();
  uint32_t ReadRegister(uint64_t offset);
  void WriteRegister(uint64_t offset, uint32_t value);
  void WriteQueueRegister(uint64_t offset, uint32_t value);
  void WriteStatus(uint32_t value);
  void WriteDriverFeatures(uint32_t value);
  void Notify(uint32_t queue);
  void ResetLocked();
  void ActivateLocked();
  bool FeaturesAcceptable() const;
  VirtqueueConfig* SelectedQueue();
  MmioTransportState SaveRegistersLocked() const;
  Status CheckRestorable(const MmioTransportState& state) const;
  std::vector<int> NotifyFdNumbers() const;
  template <typename... Args>
  void RejectAccess(fmt::format_string<Args...> format, Args&&... args);

  const std::shared_ptr<VirtioDevice> device_;
  memory::GuestMemory* memory_;
  const uint64_t base_address_;
  std::shared_ptr<MmioInterrupt> interrupt_;
  std::shared_ptr<IoeventfdRegistrar> ioeventfds_;
  std::vector<UniqueFd> notify_fds_;
  std::vector<bool> ioeventfd_registered_;

  mutable std::mutex mutex_;
  uint32_t status_ = 0;
  uint32_t device_features_select_ = 0;
  uint32_t driver_features_select_ = 0;
  uint64_t driver_features_ = 0;
  uint32_t queue_select_ = 0;
  uint32_t config_generation_ = 0;
  std::vector<VirtqueueConfig> queues_;
  bool abandoned_ = false;

  std::atomic<uint64_t> invalid_accesses_{0};
  std::atomic<uint64_t> activation_failures_{0};
  RateLimiter log_limiter_{10, std::chrono::seconds(5)};
};

}  // namespace forkvmm::devices::virtio
