#include "devices/virtio/mmio_wiring.h"

#include <fmt/core.h>

#include "memory/layout.h"

namespace forkvmm::devices::virtio {

static_assert(MmioTransport::kWindowSize <= memory::kVirtioMmioStride);

Result<VirtioMmioSlot> VirtioMmioSlotAt(uint32_t index) {
  if (index >= kMaxVirtioMmioDevices) {
    return Error(
        fmt::format("virtio-mmio device {} requested: at most {} devices fit in GSIs "
                    "{} to {}",
                    index, kMaxVirtioMmioDevices, kFirstVirtioMmioGsi, kLastVirtioMmioGsi));
  }
  return VirtioMmioSlot{.base = memory::kVirtioMmioBase + index * memory::kVirtioMmioStride,
                        .size = MmioTransport::kWindowSize,
                        .gsi = kFirstVirtioMmioGsi + index};
}

std::string VirtioMmioKernelParameter(const VirtioMmioSlot& slot) {
  // Linux parses the size with memparse(), so 4096 becomes "4K".
  const std::string size = slot.size % memory::kKiB == 0
                               ? fmt::format("{}K", slot.size / memory::kKiB)
                               : fmt::format("{}", slot.size);
  return fmt::format("virtio_mmio.device={}@{:#x}:{}", size, slot.base, slot.gsi);
}

Result<std::shared_ptr<MmioTransport>> AttachVirtioMmioDevice(
    Bus& mmio_bus, const VirtioMmioSlot& slot, std::shared_ptr<VirtioDevice> device,
    memory::GuestMemory& memory, std::shared_ptr<IrqLine> irq,
    std::shared_ptr<IoeventfdRegistrar> ioeventfds) {
  ASSIGN_OR_RETURN(std::shared_ptr<MmioTransport> transport,
                   MmioTransport::Create(std::move(device), memory, slot.base, std::move(irq),
                                         std::move(ioeventfds)));
  TRY_CTX(mmio_bus.Register(slot.base, slot.size, transport),
          fmt::format("virtio-mmio device at {:#x}", slot.base));
  return transport;
}

}  // namespace forkvmm::devices::virtio
