// RAII wrappers for the three kinds of KVM file descriptor: the system
// (/dev/kvm), a VM and a vCPU. These are the only classes in forkvmm that
// call ioctl(). Each object owns exactly one fd, opened O_CLOEXEC.
//
// KVM binds a VM to the address space of the process that created it: after
// fork() every ioctl on an inherited VM or vCPU fd fails with EIO. A fork
// child therefore closes what it inherited and creates its own objects.
//
// Thread safety: a KvmVcpu is used by its own vCPU thread, except for
// RequestExit(), which any thread may call. KvmVm calls are thread-safe as
// far as KVM's ioctls are.
#pragma once

#include <linux/kvm.h>

#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "vmm/base/result.h"
#include "vmm/base/unique_fd.h"
#include "vmm/kvm/kvm_abi.h"

namespace forkvmm::kvm {

using CpuidEntries = std::vector<kvm_cpuid_entry2>;

struct MsrEntry {
  uint32_t index = 0;
  uint64_t value = 0;
};

class KvmVm;
class KvmVcpu;

class KvmSystem {
 public:
  // Opens /dev/kvm (or `path`) and checks the API version and the
  // capabilities forkvmm cannot run without.
  static Result<KvmSystem> Open(const std::string& path = "/dev/kvm");

  int CheckExtension(long capability) const;
  Result<CpuidEntries> GetSupportedCpuid() const;
  Result<std::vector<uint32_t>> GetMsrIndexList() const;
  int vcpu_mmap_size() const { return vcpu_mmap_size_; }
  const std::string& path() const { return path_; }

  Result<KvmVm> CreateVm() const;

 private:
  KvmSystem(UniqueFd fd, std::string path) : fd_(std::move(fd)), path_(std::move(path)) {}
  UniqueFd fd_;
  std::string path_;
  int vcpu_mmap_size_ = 0;
};

class KvmVm {
 public:
  KvmVm(KvmVm&&) = default;
  KvmVm& operator=(KvmVm&&) = default;

  // Registers guest memory. `host` must stay mapped until the slot is
  // removed or the VM is closed; GuestMemory outlives the VM by construction.
  Status SetUserMemoryRegion(uint32_t slot, uint64_t guest_address, uint64_t size, void* host,
                             uint32_t flags = 0);
  Status SetTssAddress(uint64_t address);
  Status SetIdentityMapAddress(uint64_t address);
  // Creates the in-kernel PIC, IOAPIC and local APICs. Must follow the memory
  // slots: the other order makes the first slot commit wait 4-10 ms for SRCU.
  Status CreateIrqchip();
  Status CreatePit();
  Status EnableCapability(uint32_t capability, uint64_t arg0 = 0);
  Status SetIrqLine(uint32_t gsi, bool level);
  // Makes a write to `event_fd` raise `gsi` in the in-kernel irqchip.
  Status AddIrqfd(int event_fd, uint32_t gsi);
  Status RemoveIrqfd(int event_fd, uint32_t gsi);
  // Makes a guest write of `length` bytes to MMIO `address` signal `event_fd`
  // instead of exiting to userspace.
  Status AddIoeventfd(int event_fd, uint64_t address, uint32_t length);
  Status RemoveIoeventfd(int event_fd, uint64_t address, uint32_t length);
  // Like AddIoeventfd, but only a write of the value `datamatch` signals
  // `event_fd`, and other values still exit to userspace. Virtio-mmio
  // registers one per queue on its QueueNotify register.
  Status AddIoeventfdWithDatamatch(int event_fd, uint64_t address, uint32_t length,
                                   uint64_t datamatch);
  Status RemoveIoeventfdWithDatamatch(int event_fd, uint64_t address, uint32_t length,
                                      uint64_t datamatch);

  Result<kvm_irqchip> GetIrqchip(uint32_t chip_id) const;
  Status SetIrqchip(const kvm_irqchip& chip);
  Result<kvm_pit_state2> GetPit() const;
  Status SetPit(const kvm_pit_state2& state);
  Result<kvm_clock_data> GetClock() const;
  Status SetClock(const kvm_clock_data& clock);

  Result<KvmVcpu> CreateVcpu(uint32_t id) const;

 private:
  friend class KvmSystem;
  KvmVm(UniqueFd fd, int vcpu_mmap_size) : fd_(std::move(fd)), vcpu_mmap_size_(vcpu_mmap_size) {}
  UniqueFd fd_;
  int vcpu_mmap_size_ = 0;
};

class KvmVcpu {
 public:
  KvmVcpu(KvmVcpu&& other) noexcept;
  KvmVcpu& operator=(KvmVcpu&& other) noexcept;
  KvmVcpu(const KvmVcpu&) = delete;
  KvmVcpu& operator=(const KvmVcpu&) = delete;
  ~KvmVcpu();

  uint32_t id() const { return id_; }
  // The shared kvm_run page: exit reason and exit data after Run().
  kvm_run* run_state() { return run_; }

  // Enters the guest until the next exit. Returns the errno of KVM_RUN on
  // failure; EINTR means a signal or RequestExit() interrupted it.
  Status Run();
  // Makes the current or next Run() return EINTR at once (immediate_exit).
  // The caller also sends the vCPU thread a signal to interrupt a running
  // guest. Safe from any thread.
  void RequestExit();
  void ClearExitRequest();

  Status SetCpuid(const CpuidEntries& entries);
  Result<kvm_regs> GetRegs() const;
  Status SetRegs(const kvm_regs& regs);
  Result<kvm_sregs> GetSregs() const;
  Status SetSregs(const kvm_sregs& sregs);
  Result<kvm_fpu> GetFpu() const;
  Status SetFpu(const kvm_fpu& fpu);
  Result<kvm_lapic_state> GetLapic() const;
  Status SetLapic(const kvm_lapic_state& lapic);
  Result<kvm_vcpu_events> GetEvents() const;
  Status SetEvents(const kvm_vcpu_events& events);
  Result<kvm_mp_state> GetMpState() const;
  Status SetMpState(const kvm_mp_state& state);
  Result<kvm_debugregs> GetDebugRegs() const;
  Status SetDebugRegs(const kvm_debugregs& regs);
  Result<kvm_xcrs> GetXcrs() const;
  Status SetXcrs(const kvm_xcrs& xcrs);
  // The XSAVE area in KVM_GET_XSAVE's 4 KiB layout.
  Result<abi::Xsave> GetXsave() const;
  Status SetXsave(const abi::Xsave& xsave);
  // Reads the MSRs named by the index fields of `msrs` in place. Returns the
  // number read: KVM stops at the first MSR it does not know.
  Result<size_t> GetMsrs(std::span<MsrEntry> msrs) const;
  // Writes all of `msrs` or fails naming the first one KVM rejected.
  Status SetMsrs(std::span<const MsrEntry> msrs);
  Result<uint32_t> GetTscKhz() const;
  // Tells the guest (via kvmclock) that it was paused, so its soft-lockup
  // watchdog does not fire after a long pause. Fails with EINVAL when the
  // guest has not enabled kvmclock.
  Status NotifyPaused();
  // Reads KVM's binary statistics of this vCPU (KVM_GET_STATS_FD): exit
  // counts by kind, halt polling, injected interrupts. Histograms are
  // summed into one value. Empty where the kernel lacks the interface.
  Result<std::map<std::string, uint64_t>> ReadStats();

 private:
  friend class KvmVm;
  KvmVcpu(UniqueFd fd, uint32_t id, kvm_run* run, size_t run_size)
      : fd_(std::move(fd)), id_(id), run_(run), run_size_(run_size) {}
  void Unmap();

  UniqueFd fd_;
  uint32_t id_ = 0;
  kvm_run* run_ = nullptr;
  size_t run_size_ = 0;
  UniqueFd stats_fd_;
};

}  // namespace forkvmm::kvm
