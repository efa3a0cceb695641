// The interface between a virtio device model and its transport.
//
// A device declares its type, features, configuration space and queues, and
// processes requests once activated. It does not depend on the transport
// (virtio-mmio today, PCI later). The transport owns the device, negotiates
// features with the driver, and hands the device its queues, notification
// eventfds and an interrupt sink in Activate().
//
// Lifecycle of a device (DeviceLifecycle):
//
//   kInactive --Activate--> kRunning --Quiesce--> kQuiesced --Resume--> kRunning
//       ^                      |                      |
//       +-------Reset----------+--------Reset---------+
//
//   any state --AbandonAfterFork--> kAbandoned (only destruction follows)
//
// Save() works in kInactive and kQuiesced and fails in kRunning: a running
// device's queues change under it. Snapshots and fork only touch quiesced
// devices. Restoring is Activate() with the saved queues (see
// ActivationFromState).
//
// Thread safety: the transport calls the control methods (Activate, Reset,
// Quiesce, Resume, Save, AbandonAfterFork) from one thread at a time;
// ReadConfig and WriteConfig may come from any vCPU thread, serialized by
// the transport. Devices may run their own worker threads.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string_view>
#include <vector>

#include "devices/virtio/virtqueue.h"
#include "memory/guest_memory.h"
#include "vmm/base/result.h"

namespace forkvmm::devices::virtio {

// Notifications from a device to the driver, implemented by the transport.
// Thread-safe: device worker threads call these.
class VirtioInterrupt {
 public:
  virtual ~VirtioInterrupt() = default;
  // Sends a used-buffer notification.
  virtual void NotifyUsedBuffers() = 0;
  // Sends a configuration change notification.
  virtual void NotifyConfigChange() = 0;
  // Sets DEVICE_NEEDS_RESET in the device status and sends a configuration
  // change notification, for a device that can no longer operate.
  virtual void NotifyNeedsReset() = 0;
};

// Everything a device needs to start processing its queues.
struct DeviceActivation {
  // Guest RAM, which outlives the device.
  memory::GuestMemory* memory = nullptr;
  // The features the driver accepted (a subset of device_features()).
  uint64_t driver_features = 0;
  // One entry per queue_count(). Queues the driver did not set up have
  // config.ready false. Restored queues carry their saved indices.
  std::vector<VirtqueueState> queues;
  // One eventfd per queue, readable when the driver notifies that queue.
  // The transport owns them, and they stay open until the device is reset,
  // destroyed or abandoned.
  std::vector<int> notify_fds;
  std::shared_ptr<VirtioInterrupt> interrupt;
};

// A device's state for snapshots and fork, as plain data.
struct VirtioDeviceState {
  uint32_t device_type = 0;
  // False before the driver set DRIVER_OK, and after a reset.
  bool active = false;
  uint64_t driver_features = 0;
  // The queues at the time of saving, or none when not active.
  std::vector<VirtqueueState> queues;

  bool operator==(const VirtioDeviceState&) const = default;
};

enum class DeviceLifecycle { kInactive, kRunning, kQuiesced, kAbandoned };

std::string_view DeviceLifecycleName(DeviceLifecycle lifecycle);

class VirtioDevice {
 public:
  virtual ~VirtioDevice() = default;

  // The virtio device ID (virtio 1.2 §5), e.g. VIRTIO_ID_BLOCK.
  virtual uint32_t device_type() const = 0;
  // The feature bits the device offers, including kVirtqueueFeatures.
  virtual uint64_t device_features() const = 0;
  virtual size_t queue_count() const = 0;
  virtual uint16_t max_queue_size(size_t queue) const = 0;

  // Device-specific configuration space. Reads past its end return zeros
  // and writes there are ignored.
  virtual void ReadConfig(uint64_t offset, std::span<uint8_t> data) const = 0;
  virtual void WriteConfig(uint64_t offset, std::span<const uint8_t> data) = 0;

  // Starts processing (kInactive -> kRunning). Fails, leaving the device
  // inactive, if a queue the device needs is missing or invalid. The
  // transport then reports DEVICE_NEEDS_RESET to the driver.
  virtual Status Activate(DeviceActivation activation) = 0;
  // Stops processing and drops the queues (-> kInactive). Requests in
  // flight complete into the used ring first. Does nothing in kAbandoned.
  virtual void Reset() = 0;

  // Stops taking new requests, completes every request in flight into the
  // used ring, parks the device (kRunning -> kQuiesced) and returns its
  // state. Fails if the device could not complete its requests.
  virtual Result<VirtioDeviceState> Quiesce() = 0;
  // Continues after Quiesce() (kQuiesced -> kRunning).
  virtual Status Resume() = 0;
  // Returns the state of an inactive or quiesced device, and fails while it
  // runs.
  virtual Result<VirtioDeviceState> Save() const = 0;

  // In a fork child: stops using every file descriptor inherited from the
  // parent without touching the parent's kernel objects. The device must be
  // quiesced or inactive. Afterwards it may only be destroyed.
  virtual void AbandonAfterFork() = 0;

  virtual DeviceLifecycle lifecycle() const = 0;
};

// Builds the activation that restores a device saved as `state`.
DeviceActivation ActivationFromState(const VirtioDeviceState& state, memory::GuestMemory& memory,
                                     std::vector<int> notify_fds,
                                     std::shared_ptr<VirtioInterrupt> interrupt);

}  // namespace forkvmm::devices::virtio
