#include "devices/virtio/mmio_transport.h"

#include <linux/virtio_mmio.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cstring>

namespace forkvmm::devices::virtio {
namespace {

// "virt" in little-endian byte order (virtio 1.2 §4.2.2).
constexpr uint32_t kMagicValue = 0x74726976;
constexpr uint32_t kVersion = 2;
// "FKVM" in little-endian byte order, which drivers do not interpret.
constexpr uint32_t kVendorId = 0x4d564b46;
constexpr uint32_t kNoSharedMemoryRegion = 0xffff'ffff;
constexpr uint32_t kQueueNotifyLength = 4;
// The QueueReset register (virtio 1.2 §4.2.2), missing from older
// linux/virtio_mmio.h.
constexpr uint64_t kQueueResetOffset = 0x0c0;

constexpr uint32_t kStatusBitsDriverMaySet = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER |
                                             VIRTIO_CONFIG_S_FEATURES_OK |
                                             VIRTIO_CONFIG_S_DRIVER_OK | VIRTIO_CONFIG_S_FAILED;

uint32_t Low32(uint64_t value) {
  return static_cast<uint32_t>(value);
}
uint32_t High32(uint64_t value) {
  return static_cast<uint32_t>(value >> 32);
}
void SetLow32(uint64_t& target, uint32_t value) {
  target = (target & 0xffff'ffff'0000'0000) | value;
}
void SetHigh32(uint64_t& target, uint32_t value) {
  target = (target & 0xffff'ffff) | (uint64_t{value} << 32);
}

}  // namespace

// The interrupt state shared between the transport (vCPU threads) and the
// device's worker threads.
class MmioInterrupt : public VirtioInterrupt {
 public:
  explicit MmioInterrupt(std::shared_ptr<IrqLine> irq) : irq_(std::move(irq)) {}

  void NotifyUsedBuffers() override { Raise(VIRTIO_MMIO_INT_VRING); }
  void NotifyConfigChange() override { Raise(VIRTIO_MMIO_INT_CONFIG); }
  void NotifyNeedsReset() override {
    needs_reset_.store(true);
    Raise(VIRTIO_MMIO_INT_CONFIG);
  }

  uint32_t status() const { return status_.load(); }
  bool needs_reset() const { return needs_reset_.load(); }
  void Acknowledge(uint32_t bits) { status_.fetch_and(~bits); }
  void Load(uint32_t status, bool needs_reset) {
    status_.store(status);
    needs_reset_.store(needs_reset);
  }
  // Re-sends the interrupt for events the driver has not acknowledged, in
  // case an edge was lost while the state moved between processes.
  void Replay() {
    if (status_.load() != 0 && irq_) irq_->Trigger();
  }
  void DropLine() { irq_.reset(); }

 private:
  void Raise(uint32_t bit) {
    status_.fetch_or(bit);
    if (irq_) irq_->Trigger();
  }

  std::atomic<uint32_t> status_{0};
  std::atomic<bool> needs_reset_{false};
  std::shared_ptr<IrqLine> irq_;
};

Result<std::shared_ptr<MmioTransport>> MmioTransport::Create(
    std::shared_ptr<VirtioDevice> device, memory::GuestMemory& memory, uint64_t base_address,
    std::shared_ptr<IrqLine> irq, std::shared_ptr<IoeventfdRegistrar> ioeventfds) {
  if (!device) return Error("virtio-mmio: no device");
  auto interrupt = std::make_shared<MmioInterrupt>(std::move(irq));
  std::shared_ptr<MmioTransport> transport(new MmioTransport(
      std::move(device), memory, base_address, std::move(interrupt), std::move(ioeventfds)));
  TRY_CTX(transport->CreateNotifyFds(), fmt::format("virtio-mmio device at {:#x}", base_address));
  return transport;
}

MmioTransport::MmioTransport(std::shared_ptr<VirtioDevice> device, memory::GuestMemory& memory,
                             uint64_t base_address, std::shared_ptr<MmioInterrupt> interrupt,
                             std::shared_ptr<IoeventfdRegistrar> ioeventfds)
    : device_(std::move(device)),
      memory_(&memory),
      base_address_(base_address),
      interrupt_(std::move(interrupt)),
      ioeventfds_(std::move(ioeventfds)),
      queues_(device_->queue_count()) {}

Status MmioTransport::CreateNotifyFds() {
  const size_t count = device_->queue_count();
  ioeventfd_registered_.assign(count, false);
  for (size_t queue = 0; queue < count; ++queue) {
    UniqueFd fd(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!fd.valid()) return Error::FromErrno("eventfd", fmt::format("queue {} notifier", queue));
    if (ioeventfds_) {
      TRY_CTX(ioeventfds_->Register(fd.get(), base_address_ + kQueueNotifyOffset,
                                    kQueueNotifyLength, queue),
              fmt::format("queue {} notifier", queue));
      ioeventfd_registered_[queue] = true;
    }
    notify_fds_.push_back(std::move(fd));
  }
  return Ok();
}

MmioTransport::~MmioTransport() {
  if (abandoned_) return;
  if (device_->lifecycle() != DeviceLifecycle::kInactive) device_->Reset();
  for (size_t queue = 0; queue < notify_fds_.size(); ++queue) {
    if (!ioeventfd_registered_[queue]) continue;
    Status removed = ioeventfds_->Unregister(
        notify_fds_[queue].get(), base_address_ + kQueueNotifyOffset, kQueueNotifyLength, queue);
    if (!removed.ok()) {
      LOG_ERROR("virtio-mmio device at {:#x}: unregistering queue {} notifier: {}", base_address_,
                queue, removed.error().message());
    }
  }
}

template <typename... Args>
void MmioTransport::RejectAccess(fmt::format_string<Args...> format, Args&&... args) {
  invalid_accesses_.fetch_add(1, std::memory_order_relaxed);
  LogLimited(log_limiter_, LogLevel::kWarning, "virtio-mmio device at {:#x}: {}", base_address_,
             fmt::format(format, std::forward<Args>(args)...));
}

void MmioTransport::Read(uint64_t offset, std::span<uint8_t> data) {
  std::fill(data.begin(), data.end(), 0);
  std::lock_guard lock(mutex_);
  if (abandoned_) return;
  if (offset >= VIRTIO_MMIO_CONFIG) {
    device_->ReadConfig(offset - VIRTIO_MMIO_CONFIG, data);
    return;
  }
  if (data.size() != 4 || offset % 4 != 0) {
    RejectAccess("{}-byte read at offset {:#x}: registers take aligned 4-byte accesses",
                 data.size(), offset);
    return;
  }
  uint32_t value = ReadRegister(offset);
  std::memcpy(data.data(), &value, sizeof(value));
}

uint32_t MmioTransport::ReadRegister(uint64_t offset) {
  const VirtqueueConfig* queue = SelectedQueue();
  switch (offset) {
    case VIRTIO_MMIO_MAGIC_VALUE:
      return kMagicValue;
    case VIRTIO_MMIO_VERSION:
      return kVersion;
    case VIRTIO_MMIO_DEVICE_ID:
      return device_->device_type();
    case VIRTIO_MMIO_VENDOR_ID:
      return kVendorId;
    case VIRTIO_MMIO_DEVICE_FEATURES:
      if (device_features_select_ == 0) return Low32(device_->device_features());
      if (device_features_select_ == 1) return High32(device_->device_features());
      return 0;
    case VIRTIO_MMIO_QUEUE_NUM_MAX:
      return queue ? device_->max_queue_size(queue_select_) : 0;
    case VIRTIO_MMIO_QUEUE_READY:
      return queue && queue->ready ? 1 : 0;
    case VIRTIO_MMIO_INTERRUPT_STATUS:
      return interrupt_->status();
    case VIRTIO_MMIO_STATUS:
      return status_ | (interrupt_->needs_reset() ? VIRTIO_CONFIG_S_NEEDS_RESET : 0);
    case VIRTIO_MMIO_SHM_LEN_LOW:
    case VIRTIO_MMIO_SHM_LEN_HIGH:
    case VIRTIO_MMIO_SHM_BASE_LOW:
    case VIRTIO_MMIO_SHM_BASE_HIGH:
      return kNoSharedMemoryRegion;
    case kQueueResetOffset:
      return 0;
    case VIRTIO_MMIO_CONFIG_GENERATION:
      return config_generation_;
    default:
      RejectAccess("read of write-only or unknown register {:#x}", offset);
      return 0;
  }
}

void MmioTransport::Write(uint64_t offset, std::span<const uint8_t> data) {
  std::lock_guard lock(mutex_);
  if (abandoned_) return;
  if (offset >= VIRTIO_MMIO_CONFIG) {
    device_->WriteConfig(offset - VIRTIO_MMIO_CONFIG, data);
    return;
  }
  if (data.size() != 4 || offset % 4 != 0) {
    RejectAccess("{}-byte write at offset {:#x}: registers take aligned 4-byte accesses",
                 data.size(), offset);
    return;
  }
  uint32_t value = 0;
  std::memcpy(&value, data.data(), sizeof(value));
  WriteRegister(offset, value);
}

void MmioTransport::WriteRegister(uint64_t offset, uint32_t value) {
  switch (offset) {
    case VIRTIO_MMIO_DEVICE_FEATURES_SEL:
      device_features_select_ = value;
      return;
    case VIRTIO_MMIO_DRIVER_FEATURES:
      WriteDriverFeatures(value);
      return;
    case VIRTIO_MMIO_DRIVER_FEATURES_SEL:
      driver_features_select_ = value;
      return;
    case VIRTIO_MMIO_QUEUE_SEL:
      queue_select_ = value;
      return;
    case VIRTIO_MMIO_QUEUE_NOTIFY:
      Notify(value);
      return;
    case VIRTIO_MMIO_INTERRUPT_ACK:
      interrupt_->Acknowledge(value);
      return;
    case VIRTIO_MMIO_STATUS:
      WriteStatus(value);
      return;
    case VIRTIO_MMIO_QUEUE_NUM:
    case VIRTIO_MMIO_QUEUE_READY:
    case VIRTIO_MMIO_QUEUE_DESC_LOW:
    case VIRTIO_MMIO_QUEUE_DESC_HIGH:
    case VIRTIO_MMIO_QUEUE_AVAIL_LOW:
    case VIRTIO_MMIO_QUEUE_AVAIL_HIGH:
    case VIRTIO_MMIO_QUEUE_USED_LOW:
    case VIRTIO_MMIO_QUEUE_USED_HIGH:
      WriteQueueRegister(offset, value);
      return;
    case VIRTIO_MMIO_SHM_SEL:
      return;  // every region reads as absent
    default:
      RejectAccess("write of {:#x} to read-only or unknown register {:#x}", value, offset);
      return;
  }
}

void MmioTransport::WriteDriverFeatures(uint32_t value) {
  if (!(status_ & VIRTIO_CONFIG_S_DRIVER) || (status_ & VIRTIO_CONFIG_S_FEATURES_OK)) {
    RejectAccess("driver features written in device status {:#x}", status_);
    return;
  }
  if (driver_features_select_ == 0) {
    SetLow32(driver_features_, value);
  } else if (driver_features_select_ == 1) {
    SetHigh32(driver_features_, value);
  } else if (value != 0) {
    RejectAccess("driver features {:#x} in unknown word {}", value, driver_features_select_);
  }
}

VirtqueueConfig* MmioTransport::SelectedQueue() {
  return queue_select_ < queues_.size() ? &queues_[queue_select_] : nullptr;
}

void MmioTransport::WriteQueueRegister(uint64_t offset, uint32_t value) {
  VirtqueueConfig* queue = SelectedQueue();
  if (queue == nullptr) {
    RejectAccess("write to register {:#x} of queue {}, which does not exist", offset,
                 queue_select_);
    return;
  }
  if (offset == VIRTIO_MMIO_QUEUE_READY) {
    // NOTE: Disabling a single queue of an active device is not supported.
    // The device keeps using it until the driver resets the device. Linux
    // resets the device before it clears QueueReady.
    if (status_ & VIRTIO_CONFIG_S_DRIVER_OK) {
      RejectAccess("QueueReady of queue {} written while the device is active", queue_select_);
      return;
    }
    queue->ready = value & 1;
    return;
  }
  if (queue->ready || (status_ & VIRTIO_CONFIG_S_DRIVER_OK)) {
    RejectAccess("register {:#x} of queue {} written while the queue is ready", offset,
                 queue_select_);
    return;
  }
  switch (offset) {
    case VIRTIO_MMIO_QUEUE_NUM:
      // Virtqueue::Create checks the size when the device is activated.
      queue->size = static_cast<uint16_t>(std::min<uint32_t>(value, 0xffff));
      return;
    case VIRTIO_MMIO_QUEUE_DESC_LOW:
      SetLow32(queue->descriptor_table, value);
      return;
    case VIRTIO_MMIO_QUEUE_DESC_HIGH:
      SetHigh32(queue->descriptor_table, value);
      return;
    case VIRTIO_MMIO_QUEUE_AVAIL_LOW:
      SetLow32(queue->available_ring, value);
      return;
    case VIRTIO_MMIO_QUEUE_AVAIL_HIGH:
      SetHigh32(queue->available_ring, value);
      return;
    case VIRTIO_MMIO_QUEUE_USED_LOW:
      SetLow32(queue->used_ring, value);
      return;
    case VIRTIO_MMIO_QUEUE_USED_HIGH:
      SetHigh32(queue->used_ring, value);
      return;
  }
}

void MmioTransport::Notify(uint32_t queue) {
  if (queue >= notify_fds_.size()) {
    RejectAccess("notification for queue {}, which does not exist", queue);
    return;
  }
  uint64_t one = 1;
  // A nonblocking eventfd write fails only when the counter would overflow,
  // and then a notification is pending anyway.
  ssize_t unused = ::write(notify_fds_[queue].get(), &one, sizeof(one));
  (void)unused;
}

bool MmioTransport::FeaturesAcceptable() const {
  const uint64_t offered = device_->device_features();
  const bool version_1 = (driver_features_ >> VIRTIO_F_VERSION_1) & 1;
  return version_1 && (driver_features_ & ~offered) == 0;
}

void MmioTransport::WriteStatus(uint32_t value) {
  if (value == 0) {
    ResetLocked();
    return;
  }
  const uint32_t requested = value & kStatusBitsDriverMaySet;
  if ((status_ & ~requested) != 0) {
    RejectAccess("status {:#x} clears bits of {:#x} without a reset", value, status_);
    return;
  }
  const uint32_t added = requested & ~status_;
  uint32_t next = requested;
  if ((added & VIRTIO_CONFIG_S_FEATURES_OK) && !FeaturesAcceptable()) {
    // Leaving FEATURES_OK clear is how the device refuses a feature set.
    RejectAccess("driver features {:#x} refused (offered {:#x}, VIRTIO_F_VERSION_1 required)",
                 driver_features_, device_->device_features());
    next &= ~VIRTIO_CONFIG_S_FEATURES_OK;
  }
  if ((added & VIRTIO_CONFIG_S_DRIVER_OK) && !(next & VIRTIO_CONFIG_S_FEATURES_OK)) {
    RejectAccess("DRIVER_OK set before FEATURES_OK");
    next &= ~VIRTIO_CONFIG_S_DRIVER_OK;
  }
  status_ = next;
  if ((added & next & VIRTIO_CONFIG_S_DRIVER_OK)) ActivateLocked();
}

void MmioTransport::ActivateLocked() {
  std::vector<VirtqueueState> queues;
  for (const VirtqueueConfig& config : queues_) queues.push_back({.config = config});
  DeviceActivation activation{.memory = memory_,
                              .driver_features = driver_features_,
                              .queues = std::move(queues),
                              .notify_fds = NotifyFdNumbers(),
                              .interrupt = interrupt_};
  Status activated = device_->Activate(std::move(activation));
  if (!activated.ok()) {
    activation_failures_.fetch_add(1, std::memory_order_relaxed);
    LogLimited(log_limiter_, LogLevel::kWarning,
               "virtio-mmio device at {:#x}: activation failed, the driver must reset the "
               "device: {}",
               base_address_, activated.error().message());
    interrupt_->NotifyNeedsReset();
  }
}

void MmioTransport::ResetLocked() {
  if (device_->lifecycle() != DeviceLifecycle::kInactive) device_->Reset();
  status_ = 0;
  device_features_select_ = 0;
  driver_features_select_ = 0;
  driver_features_ = 0;
  queue_select_ = 0;
  queues_.assign(queues_.size(), VirtqueueConfig{});
  interrupt_->Load(0, false);
  // Drop notifications that arrived before the reset.
  for (const UniqueFd& fd : notify_fds_) {
    uint64_t count = 0;
    ssize_t unused = ::read(fd.get(), &count, sizeof(count));
    (void)unused;
  }
}

std::vector<int> MmioTransport::NotifyFdNumbers() const {
  std::vector<int> fds;
  for (const UniqueFd& fd : notify_fds_) fds.push_back(fd.get());
  return fds;
}

MmioTransportState MmioTransport::SaveRegistersLocked() const {
  MmioTransportState state;
  state.status = status_;
  state.device_features_select = device_features_select_;
  state.driver_features_select = driver_features_select_;
  state.driver_features = driver_features_;
  state.queue_select = queue_select_;
  state.interrupt_status = interrupt_->status();
  state.needs_reset = interrupt_->needs_reset();
  state.config_generation = config_generation_;
  state.queues = queues_;
  return state;
}

Result<MmioTransportState> MmioTransport::Quiesce() {
  std::lock_guard lock(mutex_);
  MmioTransportState state = SaveRegistersLocked();
  if (device_->lifecycle() == DeviceLifecycle::kRunning) {
    ASSIGN_OR_RETURN_CTX(state.device, device_->Quiesce(),
                         fmt::format("virtio-mmio device at {:#x}", base_address_));
  } else {
    ASSIGN_OR_RETURN_CTX(state.device, device_->Save(),
                         fmt::format("virtio-mmio device at {:#x}", base_address_));
  }
  // The device may have raised an interrupt while it completed requests.
  state.interrupt_status = interrupt_->status();
  state.needs_reset = interrupt_->needs_reset();
  return state;
}

Status MmioTransport::Resume() {
  std::lock_guard lock(mutex_);
  if (device_->lifecycle() != DeviceLifecycle::kQuiesced) return Ok();
  TRY_CTX(device_->Resume(), fmt::format("virtio-mmio device at {:#x}", base_address_));
  return Ok();
}

Result<MmioTransportState> MmioTransport::Save() const {
  std::lock_guard lock(mutex_);
  MmioTransportState state = SaveRegistersLocked();
  ASSIGN_OR_RETURN_CTX(state.device, device_->Save(),
                       fmt::format("virtio-mmio device at {:#x}", base_address_));
  return state;
}

Status MmioTransport::CheckRestorable(const MmioTransportState& state) const {
  if (status_ != 0 || device_->lifecycle() != DeviceLifecycle::kInactive) {
    return Error("the transport is already in use, so restore into a new one");
  }
  if (state.queues.size() != queues_.size()) {
    return Error(
        fmt::format("the state has {} queues, the device {}", state.queues.size(), queues_.size()));
  }
  if (state.device.device_type != device_->device_type()) {
    return Error(fmt::format("the state is of device type {}, the device of type {}",
                             state.device.device_type, device_->device_type()));
  }
  if (state.device.active && !(state.status & VIRTIO_CONFIG_S_DRIVER_OK)) {
    return Error("the state has an active device without DRIVER_OK");
  }
  if ((state.driver_features & ~device_->device_features()) != 0) {
    return Error(fmt::format("the state has driver features {:#x} the device does not offer",
                             state.driver_features));
  }
  return Ok();
}

Status MmioTransport::Restore(const MmioTransportState& state) {
  std::lock_guard lock(mutex_);
  const auto context = fmt::format("restoring virtio-mmio device at {:#x}", base_address_);
  TRY_CTX(CheckRestorable(state), context);
  if (state.device.active) {
    TRY_CTX(device_->Activate(
                ActivationFromState(state.device, *memory_, NotifyFdNumbers(), interrupt_)),
            context);
  }
  status_ = state.status;
  device_features_select_ = state.device_features_select;
  driver_features_select_ = state.driver_features_select;
  driver_features_ = state.driver_features;
  queue_select_ = state.queue_select;
  config_generation_ = state.config_generation;
  queues_ = state.queues;
  interrupt_->Load(state.interrupt_status, state.needs_reset);
  interrupt_->Replay();
  return Ok();
}

void MmioTransport::AbandonAfterFork() {
  std::lock_guard lock(mutex_);
  device_->AbandonAfterFork();
  // Closing our copies leaves the parent's registrations and eventfds intact.
  notify_fds_.clear();
  interrupt_->DropLine();
  abandoned_ = true;
}

MmioTransportCounters MmioTransport::counters() const {
  return {.invalid_accesses = invalid_accesses_.load(),
          .activation_failures = activation_failures_.load()};
}

}  // namespace forkvmm::devices::virtio
