// The placement of virtio-mmio devices in a forkvmm guest (MMIO window,
// interrupt GSI, and the kernel command-line parameter through which Linux
// finds each one with CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES), and the helper
// that attaches a device to a VM's MMIO bus.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "devices/bus.h"
#include "devices/virtio/device.h"
#include "devices/virtio/mmio_transport.h"
#include "memory/guest_memory.h"
#include "vmm/base/result.h"

namespace forkvmm::devices::virtio {

// GSIs for virtio-mmio devices: 5 upwards (4 is the UART), up to 15, the
// last ISA IRQ that the MP table routes to an IOAPIC pin.
inline constexpr uint32_t kFirstVirtioMmioGsi = 5;
inline constexpr uint32_t kLastVirtioMmioGsi = 15;
inline constexpr uint32_t kMaxVirtioMmioDevices = kLastVirtioMmioGsi - kFirstVirtioMmioGsi + 1;

// The MMIO window and GSI of one virtio-mmio device.
struct VirtioMmioSlot {
  uint64_t base = 0;
  uint64_t size = MmioTransport::kWindowSize;
  uint32_t gsi = 0;
};

// Returns the slot of the `index`-th virtio-mmio device (0-based): window
// memory::kVirtioMmioBase + index * memory::kVirtioMmioStride, GSI 5 + index.
Result<VirtioMmioSlot> VirtioMmioSlotAt(uint32_t index);

// Returns the kernel parameter that declares `slot` to Linux, e.g.
// "virtio_mmio.device=4K@0xd0000000:5".
std::string VirtioMmioKernelParameter(const VirtioMmioSlot& slot);

// Creates a transport for `device` in `slot` and registers it on
// `mmio_bus`. `irq` must raise `slot.gsi` (an irqfd in a VM). `ioeventfds`
// may be null (every notification then exits to userspace). The bus and
// the caller share the transport. The last owner to release it destroys it
// and resets the device, so both must release it before `memory` goes.
Result<std::shared_ptr<MmioTransport>> AttachVirtioMmioDevice(
    Bus& mmio_bus, const VirtioMmioSlot& slot, std::shared_ptr<VirtioDevice> device,
    memory::GuestMemory& memory, std::shared_ptr<IrqLine> irq,
    std::shared_ptr<IoeventfdRegistrar> ioeventfds);

}  // namespace forkvmm::devices::virtio
