#include "vmm/vm.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <filesystem>

#include <fmt/core.h>

#include "devices/block/image.h"
#include "devices/virtio/mmio_wiring.h"
#include "vmm/base/log.h"
#include "vmm/boot/boot_layout.h"
#include "vmm/boot/boot_params.h"
#include "vmm/boot/cpuid.h"
#include "vmm/boot/kernel_loader.h"
#include "vmm/boot/mptable.h"
#include "vmm/boot/page_tables.h"
#include "vmm/boot/vcpu_boot.h"
#include "vmm/state_capture.h"

namespace forkvmm {
namespace {

constexpr uint64_t kSerialPort = 0x3f8;
constexpr uint32_t kSerialGsi = 4;

// An edge-triggered interrupt delivered through KVM_IRQFD: each write to the
// eventfd makes the in-kernel irqchip raise and lower the GSI.
class IrqfdLine : public devices::IrqLine {
 public:
  static Result<std::shared_ptr<IrqfdLine>> Create(kvm::KvmVm& vm, uint32_t gsi) {
    UniqueFd fd(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!fd.valid()) return Error::FromErrno("eventfd", fmt::format("irqfd for GSI {}", gsi));
    TRY_CTX(vm.AddIrqfd(fd.get(), gsi), fmt::format("GSI {}", gsi));
    return std::make_shared<IrqfdLine>(std::move(fd));
  }
  explicit IrqfdLine(UniqueFd fd) : fd_(std::move(fd)) {}
  void Trigger() override {
    uint64_t one = 1;
    // Cannot fail short of a counter overflow, which KVM's reads prevent.
    ssize_t unused = write(fd_.get(), &one, sizeof(one));
    (void)unused;
  }

 private:
  UniqueFd fd_;
};

// Registers virtio queue notifications with KVM_IOEVENTFD on this VM.
class KvmIoeventfds : public devices::virtio::IoeventfdRegistrar {
 public:
  explicit KvmIoeventfds(kvm::KvmVm& vm) : vm_(vm) {}
  Status Register(int event_fd, uint64_t address, uint32_t length, uint64_t datamatch) override {
    return vm_.AddIoeventfdWithDatamatch(event_fd, address, length, datamatch);
  }
  Status Unregister(int event_fd, uint64_t address, uint32_t length,
                    uint64_t datamatch) override {
    return vm_.RemoveIoeventfdWithDatamatch(event_fd, address, length, datamatch);
  }

 private:
  kvm::KvmVm& vm_;
};

// The overlay file for `vm_id` next to `top_path`: <dir>/<stem>.<tag>.qcow2.
std::string OverlayPath(const std::string& top_path, const std::string& stem,
                        const std::string& tag) {
  std::filesystem::path top(top_path);
  return (top.parent_path() / fmt::format("{}.{}.qcow2", stem, tag)).string();
}

Status CheckVcpuCount(const kvm::KvmSystem& system, uint32_t count) {
  int max_vcpus = system.CheckExtension(KVM_CAP_MAX_VCPUS);
  uint32_t limit = std::min<uint32_t>(boot::kMaxMpTableCpus,
                                      max_vcpus > 0 ? static_cast<uint32_t>(max_vcpus) : 1);
  if (count == 0 || count > limit) {
    return Error(fmt::format("invalid vCPU count {}: this host supports 1 to {}", count, limit));
  }
  return Ok();
}

}  // namespace

Result<std::unique_ptr<Vm>> Vm::CreateMachine(const VmConfig& config,
                                              memory::GuestMemory memory) {
  ASSIGN_OR_RETURN(kvm::KvmSystem system, kvm::KvmSystem::Open());
  TRY(CheckVcpuCount(system, config.vcpu_count));
  ASSIGN_OR_RETURN(kvm::KvmVm kvm_vm, system.CreateVm());
  std::unique_ptr<Vm> vm(new Vm(config, std::move(system), std::move(kvm_vm), std::move(memory)));
  // Memory slots first: KVM_CREATE_IRQCHIP before them makes the first slot
  // commit wait 4-10 ms for an SRCU grace period.
  TRY(vm->RegisterMemory());
  TRY(vm->kvm_vm_.SetTssAddress(boot::kKvmTssAddress));
  TRY(vm->kvm_vm_.SetIdentityMapAddress(boot::kKvmIdentityMapAddress));
  TRY(vm->kvm_vm_.CreateIrqchip());
  if (config.create_pit) TRY(vm->kvm_vm_.CreatePit());
  ASSIGN_OR_RETURN(vm->msrs_to_save_, MsrsToSave(vm->system_));
  return vm;
}

Result<std::unique_ptr<Vm>> Vm::Create(const VmConfig& config, const HostProfile& host,
                                       std::shared_ptr<devices::ByteSink> console) {
  ASSIGN_OR_RETURN(memory::GuestMemory memory,
                   memory::GuestMemory::Create({.ram_bytes = config.ram_bytes,
                                                .backing = config.memory_backing,
                                                .transparent_hugepages =
                                                    config.transparent_hugepages}));
  ASSIGN_OR_RETURN(std::unique_ptr<Vm> vm, CreateMachine(config, std::move(memory)));
  TRY(vm->CreateVcpus(host));
  TRY(vm->LoadGuest(host));
  TRY(vm->CreateDevices(std::move(console)));
  TRY(vm->CreateDisks());
  return vm;
}

Result<std::unique_ptr<Vm>> Vm::Restore(const VmConfig& config, const HostProfile& host,
                                        std::shared_ptr<devices::ByteSink> console,
                                        memory::GuestMemory memory,
                                        const snapshot::VmState& state) {
  if (state.machine.ram_bytes != memory.ram_bytes() ||
      state.machine.vcpu_count != config.vcpu_count ||
      state.vcpus.size() != config.vcpu_count || state.machine.has_pit != config.create_pit ||
      state.disks.size() != config.disks.size()) {
    return Error("saved VM state does not match the machine configuration");
  }
  ASSIGN_OR_RETURN(std::unique_ptr<Vm> vm, CreateMachine(config, std::move(memory)));
  vm->step_over_failed_fwait_ = host.step_over_failed_fwait;
  TRY_CTX(RestoreIrqchip(vm->kvm_vm_, state.irqchip), "restoring the interrupt controllers");
  if (state.pit) TRY_CTX(vm->kvm_vm_.SetPit(*state.pit), "restoring the PIT");
  for (const snapshot::VcpuState& vcpu_state : state.vcpus) {
    ASSIGN_OR_RETURN(kvm::KvmVcpu vcpu, vm->kvm_vm_.CreateVcpu(vcpu_state.id));
    TRY_CTX(RestoreVcpu(vcpu, vcpu_state), fmt::format("restoring vCPU {}", vcpu_state.id));
    vm->cpuid_.push_back(vcpu_state.cpuid);
    vm->vcpus_.push_back(std::move(vcpu));
  }
  // The clock last: KVM_SET_CLOCK makes kvmclock continue from the captured
  // value, so no guest time passes between capture and restore. A
  // child that starts paused sets it again when resumed.
  kvm_clock_data clock{};
  clock.clock = state.clock.clock;
  TRY_CTX(vm->kvm_vm_.SetClock(clock), "restoring kvmclock");
  vm->paused_clock_ = clock.clock;
  TRY(vm->CreateDevices(std::move(console)));
  vm->serial_->Restore(state.serial);
  TRY(vm->CreateDisks());
  // After the irqchip: a restored disk may re-send an interrupt the guest
  // had not acknowledged.
  for (size_t i = 0; i < vm->disks_.size(); ++i) {
    TRY_CTX(vm->disks_[i].transport->Restore(state.disks[i]),
            fmt::format("restoring disk {}", config.disks[i].path));
  }
  return vm;
}

Result<snapshot::VmState> Vm::CaptureState() const {
  snapshot::VmState state;
  state.machine = {memory_.ram_bytes(), config_.vcpu_count, config_.create_pit};
  for (size_t i = 0; i < vcpus_.size(); ++i) {
    ASSIGN_OR_RETURN_CTX(snapshot::VcpuState vcpu,
                         CaptureVcpu(vcpus_[i], msrs_to_save_, cpuid_[i]),
                         fmt::format("capturing vCPU {}", i));
    state.vcpus.push_back(std::move(vcpu));
  }
  ASSIGN_OR_RETURN(state.irqchip, CaptureIrqchip(kvm_vm_));
  if (config_.create_pit) {
    ASSIGN_OR_RETURN(kvm_pit_state2 pit, kvm_vm_.GetPit());
    state.pit = pit;
  }
  ASSIGN_OR_RETURN(state.clock, kvm_vm_.GetClock());
  state.serial = serial_->Save();
  for (const Disk& disk : disks_) {
    if (!disk.quiesced_state) {
      return Error("capturing the VM state: the disks are still running; quiesce them first");
    }
    state.disks.push_back(*disk.quiesced_state);
  }
  return state;
}

Result<std::vector<Vm::VcpuPosition>> Vm::QueryVcpus() const {
  std::vector<VcpuPosition> positions;
  for (const kvm::KvmVcpu& vcpu : vcpus_) {
    ASSIGN_OR_RETURN(kvm_regs regs, vcpu.GetRegs());
    ASSIGN_OR_RETURN(kvm_sregs sregs, vcpu.GetSregs());
    ASSIGN_OR_RETURN(kvm_mp_state mp_state, vcpu.GetMpState());
    positions.push_back({regs.rip, static_cast<uint32_t>(sregs.cs.selector & 3), mp_state.mp_state,
                         (regs.rflags & (1u << 9)) != 0});
  }
  return positions;
}

std::vector<std::map<std::string, uint64_t>> Vm::KvmStats() {
  std::vector<std::map<std::string, uint64_t>> all;
  for (kvm::KvmVcpu& vcpu : vcpus_) {
    auto stats = vcpu.ReadStats();
    all.push_back(stats.ok() ? *stats : std::map<std::string, uint64_t>{});
  }
  return all;
}

Status Vm::CreateDisks() {
  if (config_.disks.size() > devices::virtio::kMaxVirtioMmioDevices) {
    return Error(fmt::format("{} disks given; forkvmm supports at most {}", config_.disks.size(),
                             devices::virtio::kMaxVirtioMmioDevices));
  }
  ioeventfds_ = std::make_shared<KvmIoeventfds>(kvm_vm_);
  for (size_t i = 0; i < config_.disks.size(); ++i) {
    const DiskConfig& disk = config_.disks[i];
    ASSIGN_OR_RETURN(auto slot, devices::virtio::VirtioMmioSlotAt(static_cast<uint32_t>(i)));
    ASSIGN_OR_RETURN(std::unique_ptr<block::BlockBackend> backend,
                     block::OpenImage(disk.path, disk.format, {.read_only = disk.read_only}));
    ASSIGN_OR_RETURN(auto device,
                     devices::virtio::VirtioBlock::Create(
                         std::move(backend), {.id = fmt::format("forkvmm-disk{}", i)}));
    ASSIGN_OR_RETURN(auto irq, IrqfdLine::Create(kvm_vm_, slot.gsi));
    ASSIGN_OR_RETURN(auto transport, devices::virtio::AttachVirtioMmioDevice(
                                         mmio_bus_, slot, device, memory_, irq, ioeventfds_));
    disks_.push_back({device, transport, std::nullopt});
  }
  return Ok();
}

Status Vm::QuiesceDisks() {
  for (size_t i = 0; i < disks_.size(); ++i) {
    Disk& disk = disks_[i];
    if (disk.quiesced_state) continue;
    auto state = disk.transport->Quiesce();
    if (!state.ok()) {
      // Leave every disk running, as before the call.
      Status resumed = ResumeDisks();
      (void)resumed;
      return std::move(state).error().WithContext(
          fmt::format("quiescing disk {}", config_.disks[i].path));
    }
    disk.quiesced_state = std::move(state).value();
  }
  return Ok();
}

Status Vm::ResumeDisks() {
  Status result = Ok();
  for (size_t i = 0; i < disks_.size(); ++i) {
    Disk& disk = disks_[i];
    if (!disk.quiesced_state) continue;
    Status status = disk.transport->Resume();
    if (status.ok()) {
      disk.quiesced_state.reset();
    } else if (result.ok()) {
      result = std::move(status).error().WithContext(
          fmt::format("resuming disk {}", config_.disks[i].path));
    }
  }
  return result;
}

Result<DiskBranch> Vm::PrepareBranch(const std::string& own_id, uint32_t generation,
                                     const std::vector<std::string>& child_ids) const {
  DiskBranch branch;
  for (size_t i = 0; i < config_.disks.size(); ++i) {
    const DiskConfig& disk = config_.disks[i];
    if (disk.read_only) continue;
    DiskBranch::Entry entry;
    entry.disk = i;
    entry.parent_overlay =
        OverlayPath(disk.path, disk.overlay_stem, fmt::format("{}-{}", own_id, generation));
    for (const std::string& child : child_ids) {
      entry.child_overlays.push_back(OverlayPath(disk.path, disk.overlay_stem, child));
    }
    // The overlay sits next to its backing file, so the recorded name is
    // the file name alone and the pair can move together.
    std::string backing_name = std::filesystem::path(disk.path).filename().string();
    std::vector<std::string> paths = entry.child_overlays;
    paths.insert(paths.begin(), entry.parent_overlay);
    for (size_t k = 0; k < paths.size(); ++k) {
      Status status = block::CreateOverlay(paths[k], backing_name, disk.format);
      if (!status.ok()) {
        for (size_t j = 0; j < k; ++j) unlink(paths[j].c_str());
        DiscardBranch(branch);
        return std::move(status).error().WithContext(
            fmt::format("creating a fork overlay of disk {}", disk.path));
      }
    }
    branch.entries.push_back(std::move(entry));
  }
  return branch;
}

void Vm::DiscardBranch(const DiskBranch& branch) {
  for (const DiskBranch::Entry& entry : branch.entries) {
    unlink(entry.parent_overlay.c_str());
    for (const std::string& path : entry.child_overlays) unlink(path.c_str());
  }
}

Status Vm::FreezeBranch(const DiskBranch& branch) {
  for (size_t k = 0; k < branch.entries.size(); ++k) {
    const DiskBranch::Entry& entry = branch.entries[k];
    block::BlockBackend* top = disks_[entry.disk].device->backend();
    Status frozen =
        top != nullptr ? top->ReopenReadOnly() : Status(Error("the disk has no backend"));
    if (frozen.ok()) continue;
    DiskBranch done;
    done.entries.assign(branch.entries.begin(), branch.entries.begin() + static_cast<long>(k));
    Status adopted = AdoptBranch(done);
    if (!adopted.ok()) LOG_ERROR("fork: {}", adopted.error().message());
    for (size_t j = k; j < branch.entries.size(); ++j) {
      unlink(branch.entries[j].parent_overlay.c_str());
    }
    for (const DiskBranch::Entry& e : branch.entries) {
      for (const std::string& path : e.child_overlays) unlink(path.c_str());
    }
    return std::move(frozen).error().WithContext(
        fmt::format("freezing disk {}", config_.disks[entry.disk].path));
  }
  return Ok();
}

Status Vm::AdoptBranch(const DiskBranch& branch) {
  for (const DiskBranch::Entry& entry : branch.entries) {
    Disk& disk = disks_[entry.disk];
    std::unique_ptr<block::BlockBackend> top = disk.device->ReleaseBackend();
    if (!top) return Error("AdoptBranch: the disk is running");
    ASSIGN_OR_RETURN_CTX(std::unique_ptr<block::BlockBackend> overlay,
                         block::OpenOverlayOn(entry.parent_overlay, std::move(top)),
                         fmt::format("opening fork overlay {}", entry.parent_overlay));
    TRY(disk.device->ReplaceBackend(std::move(overlay)));
    config_.disks[entry.disk].path = entry.parent_overlay;
    config_.disks[entry.disk].format = block::ImageFormat::kQcow2;
  }
  return Ok();
}

std::vector<DiskConfig> Vm::ChildDisks(const DiskBranch& branch, size_t index) const {
  std::vector<DiskConfig> disks = config_.disks;
  for (const DiskBranch::Entry& entry : branch.entries) {
    disks[entry.disk].path = entry.child_overlays.at(index);
    disks[entry.disk].format = block::ImageFormat::kQcow2;
  }
  return disks;
}

Vm::~Vm() {
  if (control_) control_->Stop({VmExit::Reason::kHostRequest, 0, "VM destroyed"});
  threads_.clear();  // joins
}

Status Vm::RegisterMemory() {
  uint32_t slot = 0;
  for (const memory::Region& region : memory_.regions()) {
    // The mapping is owned by memory_, which outlives kvm_vm_'s use of it:
    // members are destroyed after the vCPU threads are joined.
    TRY(kvm_vm_.SetUserMemoryRegion(slot++, region.guest_address, region.size, region.host));
  }
  return Ok();
}

Status Vm::CreateVcpus(const HostProfile& host) {
  step_over_failed_fwait_ = host.step_over_failed_fwait;
  const kvm::KvmSystem& system = system_;
  ASSIGN_OR_RETURN(kvm::CpuidEntries supported, system.GetSupportedCpuid());
  boot::CpuidPolicy policy;
  policy.vcpu_count = config_.vcpu_count;
  policy.tsc_deadline_timer = system.CheckExtension(KVM_CAP_TSC_DEADLINE_TIMER) > 0;
  policy.hidden_features = host.hidden_features;
  policy.hidden_kvm_features = host.hidden_kvm_features;
  for (uint32_t id = 0; id < config_.vcpu_count; ++id) {
    ASSIGN_OR_RETURN(kvm::KvmVcpu vcpu, kvm_vm_.CreateVcpu(id));
    cpuid_.push_back(boot::BuildGuestCpuid(supported, id, policy));
    TRY_CTX(vcpu.SetCpuid(cpuid_.back()), fmt::format("vCPU {}", id));
    TRY_CTX(boot::SetupCommonVcpuState(vcpu), fmt::format("vCPU {}", id));
    vcpus_.push_back(std::move(vcpu));
  }
  return Ok();
}

Status Vm::LoadGuest(const HostProfile& host) {
  ASSIGN_OR_RETURN(boot::LoadedKernel kernel, boot::LoadKernel(config_.kernel_path, memory_));
  std::optional<boot::LoadedInitrd> initrd;
  if (!config_.initrd_path.empty()) {
    ASSIGN_OR_RETURN(initrd, boot::LoadInitrd(config_.initrd_path, kernel, memory_));
  }
  std::string command_line = config_.command_line;
  for (size_t i = 0; i < config_.disks.size(); ++i) {
    ASSIGN_OR_RETURN(auto slot, devices::virtio::VirtioMmioSlotAt(static_cast<uint32_t>(i)));
    command_line += ' ' + devices::virtio::VirtioMmioKernelParameter(slot);
  }
  if (!host.extra_kernel_parameters.empty()) {
    command_line += ' ' + host.extra_kernel_parameters;
  }
  TRY(boot::WriteCommandLine(command_line, kernel, memory_));
  boot_params params = boot::BuildBootParams(kernel, initrd, boot::BuildE820Map(memory_.regions()));
  TRY(memory_.WriteObject(boot::kBootParamsAddress, params));

  uint64_t gdt[boot::kBootGdtEntries];
  boot::BootGdt(gdt);
  TRY(memory_.Write(boot::kGdtAddress, gdt, sizeof(gdt)));
  TRY(memory_.WriteObject<uint64_t>(boot::kIdtAddress, 0));
  TRY(boot::WriteIdentityPageTables(memory_));
  ASSIGN_OR_RETURN(boot::MpTable mp_table, boot::BuildMpTable(config_.vcpu_count));
  TRY(memory_.Write(boot::kMpTableAddress, mp_table.configuration_table.data(),
                    mp_table.configuration_table.size()));
  TRY(memory_.Write(boot::kMpFloatingPointerAddress, mp_table.floating_pointer.data(),
                    mp_table.floating_pointer.size()));
  return boot::SetupBootstrapVcpu(vcpus_.front(), kernel.entry);
}

Status Vm::CreateDevices(std::shared_ptr<devices::ByteSink> console) {
  ASSIGN_OR_RETURN(auto irq, IrqfdLine::Create(kvm_vm_, kSerialGsi));
  serial_irq_ = irq;
  serial_ = std::make_shared<devices::Serial>(console, serial_irq_);
  TRY(pio_bus_.Register(kSerialPort, 8, serial_));

  control_ = std::make_unique<RunControl>(vcpus_.size(), [this](size_t index) {
    if (index < threads_.size()) threads_[index]->Kick();
  });
  RunControl* control = control_.get();
  auto i8042 = std::make_shared<devices::I8042>([control] {
    control->Stop({VmExit::Reason::kGuestReset, 0, "guest reset the machine"});
  });
  TRY(pio_bus_.Register(devices::I8042::kBasePort, devices::I8042::kPortCount, i8042));
  auto debug = std::make_shared<devices::DebugDevice>(console, [control](uint32_t code) {
    control->Stop({VmExit::Reason::kGuestExitCode, static_cast<int>(code & 0xff),
                   fmt::format("guest exited with code {}", code)});
  });
  TRY(pio_bus_.Register(devices::DebugDevice::kConsolePort, 1, debug));
  TRY(mmio_bus_.Register(memory::kDebugDeviceBase, devices::DebugDevice::kMmioSize, debug));
  return Ok();
}

void Vm::Start(bool paused) {
  VcpuThread::InstallKickSignalHandler();
  if (paused) {
    control_->PauseBeforeStart();
  } else {
    ThawClock();  // a restored VM continues from its captured clock
  }
  threads_.reserve(vcpus_.size());
  for (auto& vcpu : vcpus_) {
    threads_.push_back(std::make_unique<VcpuThread>(vcpu, pio_bus_, mmio_bus_, *control_,
                                                   step_over_failed_fwait_ ? &memory_ : nullptr));
  }
  for (auto& thread : threads_) thread->Start();
  if (paused && !control_->Pause()) return;  // waits until all vCPUs parked
  state_ = paused ? VmState::kPaused : VmState::kRunning;
  if (paused && !paused_clock_) FreezeClock();
}

bool Vm::Pause() {
  if (!control_->Pause()) return false;
  state_ = VmState::kPaused;
  FreezeClock();
  return true;
}

void Vm::Resume() {
  ThawClock();
  control_->Resume();
  state_ = VmState::kRunning;
}

void Vm::FreezeClock() {
  auto clock = kvm_vm_.GetClock();
  if (clock.ok()) {
    paused_clock_ = clock->clock;
  } else {
    LOG_WARNING("pausing: {}", clock.error().message());
  }
  // Tell a kvmclock guest it was stopped, so its watchdogs do not count the
  // pause as a lockup; EINVAL before the guest enables kvmclock is expected.
  for (kvm::KvmVcpu& vcpu : vcpus_) {
    Status notified = vcpu.NotifyPaused();
    (void)notified;
  }
}

void Vm::ThawClock() {
  if (!paused_clock_) return;
  kvm_clock_data clock{};
  clock.clock = *paused_clock_;
  paused_clock_.reset();
  Status restored = kvm_vm_.SetClock(clock);
  if (!restored.ok()) LOG_WARNING("resuming: {}", restored.error().message());
}

VmExit Vm::WaitForStop() {
  VmExit exit = control_->WaitForStop();
  for (auto& thread : threads_) thread->Join();
  state_ = VmState::kStopped;
  return exit;
}

std::vector<VcpuStats> Vm::vcpu_stats() const {
  std::vector<VcpuStats> stats;
  for (const auto& thread : threads_) stats.push_back(thread->stats());
  return stats;
}

}  // namespace forkvmm
