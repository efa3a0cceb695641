#include "vmm/kvm/kvm.h"

#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <memory>
#include <vector>

#include <fmt/core.h>

namespace forkvmm::kvm {
namespace {

// Capabilities forkvmm cannot run without, with their names for errors.
struct RequiredCapability {
  long capability;
  const char* name;
};
constexpr RequiredCapability kRequiredCapabilities[] = {
    {KVM_CAP_USER_MEMORY, "KVM_CAP_USER_MEMORY"},
    {KVM_CAP_IRQCHIP, "KVM_CAP_IRQCHIP"},
    {KVM_CAP_EXT_CPUID, "KVM_CAP_EXT_CPUID"},
    {KVM_CAP_SET_TSS_ADDR, "KVM_CAP_SET_TSS_ADDR"},
    {KVM_CAP_IRQFD, "KVM_CAP_IRQFD"},
    {KVM_CAP_IOEVENTFD, "KVM_CAP_IOEVENTFD"},
    {KVM_CAP_IMMEDIATE_EXIT, "KVM_CAP_IMMEDIATE_EXIT"},
    {KVM_CAP_MP_STATE, "KVM_CAP_MP_STATE"},
    {KVM_CAP_VCPU_EVENTS, "KVM_CAP_VCPU_EVENTS"},
    {KVM_CAP_ADJUST_CLOCK, "KVM_CAP_ADJUST_CLOCK"},
};

// A zeroed buffer for a KVM struct that ends in a flexible array: the C
// layout header from kvm_abi.h immediately followed by `count` entries.
template <typename Header, typename Entry>
class FlexibleBuffer {
 public:
  explicit FlexibleBuffer(size_t count)
      : storage_((sizeof(Header) + count * sizeof(Entry) + 7) / 8, 0) {}
  Header* header() { return reinterpret_cast<Header*>(storage_.data()); }
  Entry* entries() {
    return reinterpret_cast<Entry*>(reinterpret_cast<uint8_t*>(storage_.data()) + sizeof(Header));
  }

 private:
  std::vector<uint64_t> storage_;  // 8-byte aligned, like the kernel's structs
};

Status CheckedIoctl(int fd, unsigned long request, const char* name, const void* arg) {
  if (ioctl(fd, request, arg) < 0) return Error::FromErrno(name);
  return Ok();
}

template <typename T>
Result<T> IoctlGet(int fd, unsigned long request, const char* name) {
  T value{};
  // The kernel writes at most sizeof(T) bytes into `value`.
  if (ioctl(fd, request, &value) < 0) return Error::FromErrno(name);
  return value;
}

Error OpenError(const std::string& path) {
  int errnum = errno;
  if (errnum == ENOENT) {
    return Error(fmt::format("{} not found: KVM is not available on this host (load the kvm "
                             "module, or enable virtualization for this machine)",
                             path),
                 errnum);
  }
  if (errnum == EACCES || errnum == EPERM) {
    return Error(fmt::format("permission denied opening {}: run as root or as a member of the "
                             "group that owns it",
                             path),
                 errnum);
  }
  return Error::FromErrno("open", path, errnum);
}

}  // namespace

// --- KvmSystem ---

Result<KvmSystem> KvmSystem::Open(const std::string& path) {
  UniqueFd fd(open(path.c_str(), O_RDWR | O_CLOEXEC));
  if (!fd.valid()) return OpenError(path);
  int version = ioctl(fd.get(), KVM_GET_API_VERSION, 0);
  if (version != KVM_API_VERSION) {
    return Error(fmt::format("{}: KVM API version {} is not the supported version {}", path,
                             version, KVM_API_VERSION));
  }
  KvmSystem system(std::move(fd), path);
  for (const auto& required : kRequiredCapabilities) {
    if (system.CheckExtension(required.capability) <= 0) {
      return Error(fmt::format("{}: this KVM lacks {}, which forkvmm requires", path,
                               required.name));
    }
  }
  system.vcpu_mmap_size_ = ioctl(system.fd_.get(), KVM_GET_VCPU_MMAP_SIZE, 0);
  if (system.vcpu_mmap_size_ < static_cast<int>(sizeof(kvm_run))) {
    return Error::FromErrno("KVM_GET_VCPU_MMAP_SIZE", path);
  }
  return system;
}

int KvmSystem::CheckExtension(long capability) const {
  int result = ioctl(fd_.get(), KVM_CHECK_EXTENSION, capability);
  return result < 0 ? 0 : result;
}

Result<CpuidEntries> KvmSystem::GetSupportedCpuid() const {
  // The kernel answers E2BIG until the buffer is large enough.
  for (size_t count = 64; count <= 4096; count *= 2) {
    FlexibleBuffer<abi::CpuidHeader, kvm_cpuid_entry2> cpuid(count);
    cpuid.header()->nent = static_cast<uint32_t>(count);
    // The buffer holds `nent` entries, as the ioctl expects.
    if (ioctl(fd_.get(), abi::kGetSupportedCpuid, cpuid.header()) == 0) {
      return CpuidEntries(cpuid.entries(), cpuid.entries() + cpuid.header()->nent);
    }
    if (errno != E2BIG) return Error::FromErrno("KVM_GET_SUPPORTED_CPUID");
  }
  return Error("KVM_GET_SUPPORTED_CPUID: more than 4096 entries");
}

Result<std::vector<uint32_t>> KvmSystem::GetMsrIndexList() const {
  abi::MsrListHeader probe{};
  // With nmsrs = 0 the kernel fails with E2BIG and stores the real count.
  if (ioctl(fd_.get(), abi::kGetMsrIndexList, &probe) < 0 && errno != E2BIG) {
    return Error::FromErrno("KVM_GET_MSR_INDEX_LIST");
  }
  FlexibleBuffer<abi::MsrListHeader, uint32_t> list(probe.nmsrs);
  list.header()->nmsrs = probe.nmsrs;
  // The buffer holds `nmsrs` indices.
  if (ioctl(fd_.get(), abi::kGetMsrIndexList, list.header()) < 0) {
    return Error::FromErrno("KVM_GET_MSR_INDEX_LIST");
  }
  return std::vector<uint32_t>(list.entries(), list.entries() + list.header()->nmsrs);
}

Result<KvmVm> KvmSystem::CreateVm() const {
  int fd;
  // KVM_CREATE_VM can fail with EINTR while the kernel tears down another VM.
  do {
    fd = ioctl(fd_.get(), KVM_CREATE_VM, 0);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) return Error::FromErrno("KVM_CREATE_VM");
  return KvmVm(UniqueFd(fd), vcpu_mmap_size_);
}

// --- KvmVm ---

Status KvmVm::SetUserMemoryRegion(uint32_t slot, uint64_t guest_address, uint64_t size,
                                  void* host, uint32_t flags) {
  kvm_userspace_memory_region region{};
  region.slot = slot;
  region.flags = flags;
  region.guest_phys_addr = guest_address;
  region.memory_size = size;
  region.userspace_addr = reinterpret_cast<uint64_t>(host);
  if (ioctl(fd_.get(), KVM_SET_USER_MEMORY_REGION, &region) < 0) {
    return Error::FromErrno("KVM_SET_USER_MEMORY_REGION",
                            fmt::format("slot {} at {:#x}+{:#x}", slot, guest_address, size));
  }
  return Ok();
}

Status KvmVm::SetTssAddress(uint64_t address) {
  if (ioctl(fd_.get(), KVM_SET_TSS_ADDR, address) < 0) return Error::FromErrno("KVM_SET_TSS_ADDR");
  return Ok();
}

Status KvmVm::SetIdentityMapAddress(uint64_t address) {
  return CheckedIoctl(fd_.get(), KVM_SET_IDENTITY_MAP_ADDR, "KVM_SET_IDENTITY_MAP_ADDR", &address);
}

Status KvmVm::CreateIrqchip() {
  if (ioctl(fd_.get(), KVM_CREATE_IRQCHIP, 0) < 0) return Error::FromErrno("KVM_CREATE_IRQCHIP");
  return Ok();
}

Status KvmVm::CreatePit() {
  kvm_pit_config config{};
  // The speaker port (0x61) goes to userspace, which ignores it.
  config.flags = KVM_PIT_SPEAKER_DUMMY;
  return CheckedIoctl(fd_.get(), KVM_CREATE_PIT2, "KVM_CREATE_PIT2", &config);
}

Status KvmVm::EnableCapability(uint32_t capability, uint64_t arg0) {
  kvm_enable_cap cap{};
  cap.cap = capability;
  cap.args[0] = arg0;
  if (ioctl(fd_.get(), KVM_ENABLE_CAP, &cap) < 0) {
    return Error::FromErrno("KVM_ENABLE_CAP", fmt::format("capability {}", capability));
  }
  return Ok();
}

Status KvmVm::SetIrqLine(uint32_t gsi, bool level) {
  kvm_irq_level irq{};
  irq.irq = gsi;
  irq.level = level ? 1 : 0;
  return CheckedIoctl(fd_.get(), KVM_IRQ_LINE, "KVM_IRQ_LINE", &irq);
}

Status KvmVm::AddIrqfd(int event_fd, uint32_t gsi) {
  kvm_irqfd irqfd{};
  irqfd.fd = static_cast<uint32_t>(event_fd);
  irqfd.gsi = gsi;
  return CheckedIoctl(fd_.get(), KVM_IRQFD, "KVM_IRQFD", &irqfd);
}

Status KvmVm::RemoveIrqfd(int event_fd, uint32_t gsi) {
  kvm_irqfd irqfd{};
  irqfd.fd = static_cast<uint32_t>(event_fd);
  irqfd.gsi = gsi;
  irqfd.flags = KVM_IRQFD_FLAG_DEASSIGN;
  return CheckedIoctl(fd_.get(), KVM_IRQFD, "KVM_IRQFD (deassign)", &irqfd);
}

Status KvmVm::AddIoeventfd(int event_fd, uint64_t address, uint32_t length) {
  kvm_ioeventfd ioeventfd{};
  ioeventfd.addr = address;
  ioeventfd.len = length;
  ioeventfd.fd = event_fd;
  return CheckedIoctl(fd_.get(), KVM_IOEVENTFD, "KVM_IOEVENTFD", &ioeventfd);
}

Status KvmVm::RemoveIoeventfd(int event_fd, uint64_t address, uint32_t length) {
  kvm_ioeventfd ioeventfd{};
  ioeventfd.addr = address;
  ioeventfd.len = length;
  ioeventfd.fd = event_fd;
  ioeventfd.flags = KVM_IOEVENTFD_FLAG_DEASSIGN;
  return CheckedIoctl(fd_.get(), KVM_IOEVENTFD, "KVM_IOEVENTFD (deassign)", &ioeventfd);
}

Status KvmVm::AddIoeventfdWithDatamatch(int event_fd, uint64_t address, uint32_t length,
                                        uint64_t datamatch) {
  kvm_ioeventfd ioeventfd{};
  ioeventfd.datamatch = datamatch;
  ioeventfd.addr = address;
  ioeventfd.len = length;
  ioeventfd.fd = event_fd;
  ioeventfd.flags = KVM_IOEVENTFD_FLAG_DATAMATCH;
  return CheckedIoctl(fd_.get(), KVM_IOEVENTFD, "KVM_IOEVENTFD (datamatch)", &ioeventfd);
}

Status KvmVm::RemoveIoeventfdWithDatamatch(int event_fd, uint64_t address, uint32_t length,
                                           uint64_t datamatch) {
  kvm_ioeventfd ioeventfd{};
  ioeventfd.datamatch = datamatch;
  ioeventfd.addr = address;
  ioeventfd.len = length;
  ioeventfd.fd = event_fd;
  ioeventfd.flags = KVM_IOEVENTFD_FLAG_DATAMATCH | KVM_IOEVENTFD_FLAG_DEASSIGN;
  return CheckedIoctl(fd_.get(), KVM_IOEVENTFD, "KVM_IOEVENTFD (datamatch, deassign)",
                      &ioeventfd);
}

Result<kvm_irqchip> KvmVm::GetIrqchip(uint32_t chip_id) const {
  kvm_irqchip chip{};
  chip.chip_id = chip_id;
  if (ioctl(fd_.get(), KVM_GET_IRQCHIP, &chip) < 0) {
    return Error::FromErrno("KVM_GET_IRQCHIP", fmt::format("chip {}", chip_id));
  }
  return chip;
}

Status KvmVm::SetIrqchip(const kvm_irqchip& chip) {
  return CheckedIoctl(fd_.get(), KVM_SET_IRQCHIP, "KVM_SET_IRQCHIP", &chip);
}

Result<kvm_pit_state2> KvmVm::GetPit() const {
  return IoctlGet<kvm_pit_state2>(fd_.get(), KVM_GET_PIT2, "KVM_GET_PIT2");
}

Status KvmVm::SetPit(const kvm_pit_state2& state) {
  return CheckedIoctl(fd_.get(), KVM_SET_PIT2, "KVM_SET_PIT2", &state);
}

Result<kvm_clock_data> KvmVm::GetClock() const {
  return IoctlGet<kvm_clock_data>(fd_.get(), KVM_GET_CLOCK, "KVM_GET_CLOCK");
}

Status KvmVm::SetClock(const kvm_clock_data& clock) {
  return CheckedIoctl(fd_.get(), KVM_SET_CLOCK, "KVM_SET_CLOCK", &clock);
}

Result<KvmVcpu> KvmVm::CreateVcpu(uint32_t id) const {
  int fd = ioctl(fd_.get(), KVM_CREATE_VCPU, static_cast<unsigned long>(id));
  if (fd < 0) return Error::FromErrno("KVM_CREATE_VCPU", fmt::format("vCPU {}", id));
  UniqueFd owned(fd);
  size_t size = static_cast<size_t>(vcpu_mmap_size_);
  void* run = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (run == MAP_FAILED) return Error::FromErrno("mmap", fmt::format("kvm_run of vCPU {}", id));
  // A fork child must never see the parent's live kvm_run page.
  if (madvise(run, size, MADV_DONTFORK) != 0) {
    Error error = Error::FromErrno("madvise MADV_DONTFORK", fmt::format("kvm_run of vCPU {}", id));
    munmap(run, size);
    return error;
  }
  return KvmVcpu(std::move(owned), id, static_cast<kvm_run*>(run), size);
}

// --- KvmVcpu ---

KvmVcpu::KvmVcpu(KvmVcpu&& other) noexcept { *this = std::move(other); }

KvmVcpu& KvmVcpu::operator=(KvmVcpu&& other) noexcept {
  if (this == &other) return *this;
  Unmap();
  fd_ = std::move(other.fd_);
  stats_fd_ = std::move(other.stats_fd_);
  id_ = other.id_;
  run_ = std::exchange(other.run_, nullptr);
  run_size_ = std::exchange(other.run_size_, 0);
  return *this;
}

KvmVcpu::~KvmVcpu() { Unmap(); }

void KvmVcpu::Unmap() {
  if (run_ != nullptr) munmap(run_, run_size_);
  run_ = nullptr;
}

Status KvmVcpu::Run() {
  if (ioctl(fd_.get(), KVM_RUN, 0) < 0) return Error::FromErrno("KVM_RUN");
  return Ok();
}

void KvmVcpu::RequestExit() { __atomic_store_n(&run_->immediate_exit, 1, __ATOMIC_SEQ_CST); }

void KvmVcpu::ClearExitRequest() { __atomic_store_n(&run_->immediate_exit, 0, __ATOMIC_SEQ_CST); }

Status KvmVcpu::SetCpuid(const CpuidEntries& entries) {
  FlexibleBuffer<abi::CpuidHeader, kvm_cpuid_entry2> cpuid(entries.size());
  cpuid.header()->nent = static_cast<uint32_t>(entries.size());
  std::copy(entries.begin(), entries.end(), cpuid.entries());
  // The buffer holds `nent` entries.
  return CheckedIoctl(fd_.get(), abi::kSetCpuid2, "KVM_SET_CPUID2", cpuid.header());
}

Result<kvm_regs> KvmVcpu::GetRegs() const {
  return IoctlGet<kvm_regs>(fd_.get(), KVM_GET_REGS, "KVM_GET_REGS");
}
Status KvmVcpu::SetRegs(const kvm_regs& regs) {
  return CheckedIoctl(fd_.get(), KVM_SET_REGS, "KVM_SET_REGS", &regs);
}
Result<kvm_sregs> KvmVcpu::GetSregs() const {
  return IoctlGet<kvm_sregs>(fd_.get(), KVM_GET_SREGS, "KVM_GET_SREGS");
}
Status KvmVcpu::SetSregs(const kvm_sregs& sregs) {
  return CheckedIoctl(fd_.get(), KVM_SET_SREGS, "KVM_SET_SREGS", &sregs);
}
Result<kvm_fpu> KvmVcpu::GetFpu() const {
  return IoctlGet<kvm_fpu>(fd_.get(), KVM_GET_FPU, "KVM_GET_FPU");
}
Status KvmVcpu::SetFpu(const kvm_fpu& fpu) {
  return CheckedIoctl(fd_.get(), KVM_SET_FPU, "KVM_SET_FPU", &fpu);
}
Result<kvm_lapic_state> KvmVcpu::GetLapic() const {
  return IoctlGet<kvm_lapic_state>(fd_.get(), KVM_GET_LAPIC, "KVM_GET_LAPIC");
}
Status KvmVcpu::SetLapic(const kvm_lapic_state& lapic) {
  return CheckedIoctl(fd_.get(), KVM_SET_LAPIC, "KVM_SET_LAPIC", &lapic);
}
Result<kvm_vcpu_events> KvmVcpu::GetEvents() const {
  return IoctlGet<kvm_vcpu_events>(fd_.get(), KVM_GET_VCPU_EVENTS, "KVM_GET_VCPU_EVENTS");
}
Status KvmVcpu::SetEvents(const kvm_vcpu_events& events) {
  return CheckedIoctl(fd_.get(), KVM_SET_VCPU_EVENTS, "KVM_SET_VCPU_EVENTS", &events);
}
Result<kvm_mp_state> KvmVcpu::GetMpState() const {
  return IoctlGet<kvm_mp_state>(fd_.get(), KVM_GET_MP_STATE, "KVM_GET_MP_STATE");
}
Status KvmVcpu::SetMpState(const kvm_mp_state& state) {
  return CheckedIoctl(fd_.get(), KVM_SET_MP_STATE, "KVM_SET_MP_STATE", &state);
}
Result<kvm_debugregs> KvmVcpu::GetDebugRegs() const {
  return IoctlGet<kvm_debugregs>(fd_.get(), KVM_GET_DEBUGREGS, "KVM_GET_DEBUGREGS");
}
Status KvmVcpu::SetDebugRegs(const kvm_debugregs& regs) {
  return CheckedIoctl(fd_.get(), KVM_SET_DEBUGREGS, "KVM_SET_DEBUGREGS", &regs);
}
Result<kvm_xcrs> KvmVcpu::GetXcrs() const {
  return IoctlGet<kvm_xcrs>(fd_.get(), KVM_GET_XCRS, "KVM_GET_XCRS");
}
Status KvmVcpu::SetXcrs(const kvm_xcrs& xcrs) {
  return CheckedIoctl(fd_.get(), KVM_SET_XCRS, "KVM_SET_XCRS", &xcrs);
}
Result<abi::Xsave> KvmVcpu::GetXsave() const {
  return IoctlGet<abi::Xsave>(fd_.get(), abi::kGetXsave, "KVM_GET_XSAVE");
}
Status KvmVcpu::SetXsave(const abi::Xsave& xsave) {
  return CheckedIoctl(fd_.get(), abi::kSetXsave, "KVM_SET_XSAVE", &xsave);
}

Result<size_t> KvmVcpu::GetMsrs(std::span<MsrEntry> msrs) const {
  FlexibleBuffer<abi::MsrsHeader, kvm_msr_entry> buffer(msrs.size());
  buffer.header()->nmsrs = static_cast<uint32_t>(msrs.size());
  for (size_t i = 0; i < msrs.size(); ++i) buffer.entries()[i].index = msrs[i].index;
  // The buffer holds `nmsrs` entries.
  int count = ioctl(fd_.get(), abi::kGetMsrs, buffer.header());
  if (count < 0) return Error::FromErrno("KVM_GET_MSRS");
  for (int i = 0; i < count; ++i) msrs[static_cast<size_t>(i)].value = buffer.entries()[i].data;
  return static_cast<size_t>(count);
}

Status KvmVcpu::SetMsrs(std::span<const MsrEntry> msrs) {
  FlexibleBuffer<abi::MsrsHeader, kvm_msr_entry> buffer(msrs.size());
  buffer.header()->nmsrs = static_cast<uint32_t>(msrs.size());
  for (size_t i = 0; i < msrs.size(); ++i) {
    buffer.entries()[i].index = msrs[i].index;
    buffer.entries()[i].data = msrs[i].value;
  }
  // The buffer holds `nmsrs` entries. KVM returns how many it set.
  int count = ioctl(fd_.get(), abi::kSetMsrs, buffer.header());
  if (count < 0) return Error::FromErrno("KVM_SET_MSRS");
  if (static_cast<size_t>(count) != msrs.size()) {
    return Error(fmt::format("KVM_SET_MSRS: KVM rejected MSR {:#x} (set {} of {})",
                             msrs[static_cast<size_t>(count)].index, count, msrs.size()));
  }
  return Ok();
}

Result<uint32_t> KvmVcpu::GetTscKhz() const {
  int khz = ioctl(fd_.get(), KVM_GET_TSC_KHZ, 0);
  if (khz <= 0) return Error::FromErrno("KVM_GET_TSC_KHZ");
  return static_cast<uint32_t>(khz);
}

Result<std::map<std::string, uint64_t>> KvmVcpu::ReadStats() {
  std::map<std::string, uint64_t> stats;
  if (!stats_fd_.valid()) {
    int fd = ioctl(fd_.get(), KVM_GET_STATS_FD, 0);
    if (fd < 0) return stats;  // no binary statistics on this kernel
    stats_fd_.Reset(fd);
  }
  // The file's layout (api.rst, KVM_GET_STATS_FD): a header, descriptors
  // each followed by a name of header.name_size bytes, and u64 data.
  kvm_stats_header header{};
  if (pread(stats_fd_.get(), &header, sizeof(header), 0) != sizeof(header)) {
    return Error::FromErrno("read", "KVM statistics header");
  }
  constexpr size_t kDescriptorBytes = 16;  // kvm_stats_desc before its name, in C
  if (header.num_desc > 4096 || header.name_size == 0 || header.name_size > 256) {
    return Error("KVM statistics header has implausible sizes");
  }
  size_t stride = kDescriptorBytes + header.name_size;
  std::vector<uint8_t> descriptors(header.num_desc * stride);
  if (pread(stats_fd_.get(), descriptors.data(), descriptors.size(), header.desc_offset) !=
      static_cast<ssize_t>(descriptors.size())) {
    return Error::FromErrno("read", "KVM statistics descriptors");
  }
  for (uint32_t i = 0; i < header.num_desc; ++i) {
    const uint8_t* descriptor = descriptors.data() + i * stride;
    uint16_t size;
    uint32_t offset;
    std::memcpy(&size, descriptor + 6, sizeof(size));
    std::memcpy(&offset, descriptor + 8, sizeof(offset));
    std::string name(reinterpret_cast<const char*>(descriptor + kDescriptorBytes),
                     strnlen(reinterpret_cast<const char*>(descriptor + kDescriptorBytes),
                             header.name_size));
    if (size == 0 || size > 1024) continue;
    std::vector<uint64_t> values(size);
    if (pread(stats_fd_.get(), values.data(), size * sizeof(uint64_t),
              header.data_offset + offset) != static_cast<ssize_t>(size * sizeof(uint64_t))) {
      continue;
    }
    uint64_t total = 0;
    for (uint64_t value : values) total += value;
    stats[name] = total;
  }
  return stats;
}

Status KvmVcpu::NotifyPaused() {
  if (ioctl(fd_.get(), KVM_KVMCLOCK_CTRL, 0) < 0) return Error::FromErrno("KVM_KVMCLOCK_CTRL");
  return Ok();
}

}  // namespace forkvmm::kvm
