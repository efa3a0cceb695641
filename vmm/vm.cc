#include "vmm/vm.h"

#include <sys/eventfd.h>

#include <fmt/core.h>

#include "vmm/base/log.h"
#include "vmm/boot/boot_layout.h"
#include "vmm/boot/boot_params.h"
#include "vmm/boot/cpuid.h"
#include "vmm/boot/kernel_loader.h"
#include "vmm/boot/mptable.h"
#include "vmm/boot/page_tables.h"
#include "vmm/boot/vcpu_boot.h"

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

}  // namespace

Result<std::unique_ptr<Vm>> Vm::Create(const VmConfig& config, const HostProfile& host,
                                       std::shared_ptr<devices::ByteSink> console) {
  ASSIGN_OR_RETURN(kvm::KvmSystem system, kvm::KvmSystem::Open());
  int max_vcpus = system.CheckExtension(KVM_CAP_MAX_VCPUS);
  uint32_t limit = std::min<uint32_t>(boot::kMaxMpTableCpus,
                                      max_vcpus > 0 ? static_cast<uint32_t>(max_vcpus) : 1);
  if (config.vcpu_count == 0 || config.vcpu_count > limit) {
    return Error(fmt::format("invalid vCPU count {}: this host supports 1 to {}",
                             config.vcpu_count, limit));
  }
  ASSIGN_OR_RETURN(memory::GuestMemory memory,
                   memory::GuestMemory::Create({.ram_bytes = config.ram_bytes,
                                                .backing = config.memory_backing,
                                                .transparent_hugepages =
                                                    config.transparent_hugepages}));
  ASSIGN_OR_RETURN(kvm::KvmVm kvm_vm, system.CreateVm());
  std::unique_ptr<Vm> vm(new Vm(config, std::move(kvm_vm), std::move(memory)));

  // Memory slots first: KVM_CREATE_IRQCHIP before them makes the first slot
  // commit wait 4-10 ms for an SRCU grace period.
  TRY(vm->RegisterMemory());
  TRY(vm->kvm_vm_.SetTssAddress(boot::kKvmTssAddress));
  TRY(vm->kvm_vm_.SetIdentityMapAddress(boot::kKvmIdentityMapAddress));
  TRY(vm->kvm_vm_.CreateIrqchip());
  if (config.create_pit) TRY(vm->kvm_vm_.CreatePit());
  TRY(vm->CreateVcpus(system, host));
  TRY(vm->LoadGuest(host));
  TRY(vm->CreateDevices(std::move(console)));
  return vm;
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

Status Vm::CreateVcpus(const kvm::KvmSystem& system, const HostProfile& host) {
  ASSIGN_OR_RETURN(kvm::CpuidEntries supported, system.GetSupportedCpuid());
  boot::CpuidPolicy policy;
  policy.vcpu_count = config_.vcpu_count;
  policy.tsc_deadline_timer = system.CheckExtension(KVM_CAP_TSC_DEADLINE_TIMER) > 0;
  policy.hidden_features = host.hidden_features;
  policy.hidden_kvm_features = host.hidden_kvm_features;
  for (uint32_t id = 0; id < config_.vcpu_count; ++id) {
    ASSIGN_OR_RETURN(kvm::KvmVcpu vcpu, kvm_vm_.CreateVcpu(id));
    TRY_CTX(vcpu.SetCpuid(boot::BuildGuestCpuid(supported, id, policy)),
            fmt::format("vCPU {}", id));
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

void Vm::Start() {
  VcpuThread::InstallKickSignalHandler();
  threads_.reserve(vcpus_.size());
  for (auto& vcpu : vcpus_) {
    threads_.push_back(std::make_unique<VcpuThread>(vcpu, pio_bus_, mmio_bus_, *control_));
  }
  for (auto& thread : threads_) thread->Start();
  state_ = VmState::kRunning;
}

bool Vm::Pause() {
  if (!control_->Pause()) return false;
  state_ = VmState::kPaused;
  return true;
}

void Vm::Resume() {
  control_->Resume();
  state_ = VmState::kRunning;
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
