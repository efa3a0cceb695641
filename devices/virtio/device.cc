#include "devices/virtio/device.h"

namespace forkvmm::devices::virtio {

std::string_view DeviceLifecycleName(DeviceLifecycle lifecycle) {
  switch (lifecycle) {
    case DeviceLifecycle::kInactive:
      return "inactive";
    case DeviceLifecycle::kRunning:
      return "running";
    case DeviceLifecycle::kQuiesced:
      return "quiesced";
    case DeviceLifecycle::kAbandoned:
      return "abandoned";
  }
  return "unknown";
}

DeviceActivation ActivationFromState(const VirtioDeviceState& state, memory::GuestMemory& memory,
                                     std::vector<int> notify_fds,
                                     std::shared_ptr<VirtioInterrupt> interrupt) {
  DeviceActivation activation;
  activation.memory = &memory;
  activation.driver_features = state.driver_features;
  activation.queues = state.queues;
  activation.notify_fds = std::move(notify_fds);
  activation.interrupt = std::move(interrupt);
  return activation;
}

}  // namespace forkvmm::devices::virtio
