// One virtual machine: KVM objects, guest RAM, vCPU threads and devices.
//
// Lifecycle: Create() builds everything and loads the guest (state
// kCreated), and Start() launches the vCPU threads (kRunning). Pause() parks
// them at a safe point (kPaused) and Resume() lets them continue. A stop
// request from the guest or the host ends the run, and WaitForStop() joins
// the threads (kStopped).
//
// Thread safety: Start, Pause, Resume and WaitForStop are called from one
// controlling thread; RequestStop from any thread.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "devices/block/block_backend.h"
#include "devices/bus.h"
#include "devices/legacy/debug_device.h"
#include "devices/legacy/i8042.h"
#include "devices/legacy/serial.h"
#include "devices/virtio/block.h"
#include "devices/virtio/mmio_transport.h"
#include "memory/guest_memory.h"
#include "snapshot/vm_state.h"
#include "vmm/host.h"
#include "vmm/kvm/kvm.h"
#include "vmm/run_control.h"
#include "vmm/vcpu_thread.h"

namespace forkvmm {

// One virtio-blk disk. The first disk is /dev/vda in a Linux guest.
struct DiskConfig {
  std::string path;
  block::ImageFormat format = block::ImageFormat::kQcow2;
  bool read_only = false;
  // The stem that fork overlays of this disk are named after
  // (<directory>/<stem>.<vm id>.qcow2); the boot-time file's name by default.
  std::string overlay_stem;
};

// The disk half of a fork: new overlays on each writable disk's frozen top
// layer, one for this VM and one per child.
struct DiskBranch {
  struct Entry {
    size_t disk = 0;
    std::string parent_overlay;
    std::vector<std::string> child_overlays;  // in child order
  };
  std::vector<Entry> entries;
};

struct VmConfig {
  std::string kernel_path;
  std::string initrd_path;  // empty: no initrd
  std::string command_line;
  uint64_t ram_bytes = 512 * memory::kMiB;
  uint32_t vcpu_count = 1;
  // Create KVM's in-kernel PIT. Off by default: KVM_CREATE_PIT2 starts a
  // kernel thread that every fork child would pay for again, and Linux
  // guests boot without it using kvmclock and the LAPIC timer.
  bool create_pit = false;
  memory::Backing memory_backing = memory::Backing::kAnonymous;
  bool transparent_hugepages = true;
  std::vector<DiskConfig> disks;
};

enum class VmState { kCreated, kRunning, kPaused, kStopped };

class Vm {
 public:
  // Builds the VM and loads the guest. `console` receives the output of the
  // serial port and the debug device.
  static Result<std::unique_ptr<Vm>> Create(const VmConfig& config, const HostProfile& host,
                                            std::shared_ptr<devices::ByteSink> console);

  // Builds a VM on existing guest RAM and restores `state` into it, paused
  // (state kCreated; Start() runs it). A fork child passes the RAM it
  // inherited from its parent.
  static Result<std::unique_ptr<Vm>> Restore(const VmConfig& config, const HostProfile& host,
                                             std::shared_ptr<devices::ByteSink> console,
                                             memory::GuestMemory memory,
                                             const snapshot::VmState& state);
  ~Vm();

  // Captures vCPU, interrupt controller, clock and device state. The VM
  // must be paused.
  Result<snapshot::VmState> CaptureState() const;

  // The position of a vCPU: instruction pointer, privilege level and MP
  // state. QueryVcpus() needs the VM paused.
  struct VcpuPosition {
    uint64_t rip = 0;
    uint32_t cpl = 0;
    uint32_t mp_state = 0;
    bool interrupts_enabled = false;
  };
  Result<std::vector<VcpuPosition>> QueryVcpus() const;
  // KVM's statistics for each vCPU (see KvmVcpu::ReadStats).
  std::vector<std::map<std::string, uint64_t>> KvmStats();

  // --- fork support for disks; all of these need the VM paused ---

  // Stops every disk's request processing after completing what is in
  // flight. CaptureState() then includes the disks.
  Status QuiesceDisks();
  Status ResumeDisks();
  // Creates the overlays for a fork into children `child_ids` on each
  // writable disk's top layer, without touching the layer. Runs before the
  // pause; on failure no overlay remains.
  Result<DiskBranch> PrepareBranch(const std::string& own_id, uint32_t generation,
                                   const std::vector<std::string>& child_ids) const;
  // Removes the overlays of a prepared branch that will not be used.
  static void DiscardBranch(const DiskBranch& branch);
  // Freezes each branched disk's top layer (read-only from now on: nothing
  // may write a layer that has children). Needs the disks quiesced. On
  // failure the overlays are removed and layers frozen so far carry on
  // under this VM's new overlays.
  Status FreezeBranch(const DiskBranch& branch);
  // Moves this VM onto its own new overlays after the children were forked.
  Status AdoptBranch(const DiskBranch& branch);
  // The disk configuration of child `index` of `branch`.
  std::vector<DiskConfig> ChildDisks(const DiskBranch& branch, size_t index) const;
  // The current disk configuration (top layers).
  const std::vector<DiskConfig>& disks() const { return config_.disks; }

  // Hands the guest RAM mapping to a new owner. Used only in a fork child,
  // whose copy of this object is abandoned, never destroyed: its threads do
  // not exist in the child and its fds are closed wholesale.
  memory::GuestMemory TakeMemoryForChild() { return std::move(memory_); }

  // Starts the vCPU threads; with `paused` they park at once (state
  // kPaused) until Resume().
  void Start(bool paused = false);
  // Parks every vCPU. Guest time does not advance while the VM is paused,
  // as with QEMU's stop and cont: kvmclock is read here and set back to the
  // same value by Resume(). Returns false if the VM stopped before every
  // vCPU parked.
  bool Pause();
  void Resume();
  void RequestStop(VmExit exit) { control_->Stop(std::move(exit)); }
  // Blocks until the VM stops, joins the vCPU threads and returns why.
  VmExit WaitForStop();

  VmState state() const { return state_; }
  const VmConfig& config() const { return config_; }
  RunControl& control() { return *control_; }
  devices::Serial& serial() { return *serial_; }
  memory::GuestMemory& memory() { return memory_; }
  std::vector<VcpuStats> vcpu_stats() const;

 private:
  Vm(VmConfig config, kvm::KvmSystem system, kvm::KvmVm vm, memory::GuestMemory memory)
      : config_(std::move(config)),
        system_(std::move(system)),
        kvm_vm_(std::move(vm)),
        memory_(std::move(memory)) {}
  // Creates the KVM VM, its memory slots, irqchip and PIT around `memory`.
  static Result<std::unique_ptr<Vm>> CreateMachine(const VmConfig& config,
                                                   memory::GuestMemory memory);
  Status RegisterMemory();
  Status CreateVcpus(const HostProfile& host);
  Status LoadGuest(const HostProfile& host);
  Status CreateDevices(std::shared_ptr<devices::ByteSink> console);
  Status CreateDisks();
  void FreezeClock();
  void ThawClock();

  VmConfig config_;
  kvm::KvmSystem system_;
  kvm::KvmVm kvm_vm_;
  memory::GuestMemory memory_;
  std::vector<kvm::KvmVcpu> vcpus_;
  std::vector<kvm::CpuidEntries> cpuid_;  // per vCPU, as set
  std::vector<uint32_t> msrs_to_save_;
  std::vector<std::unique_ptr<VcpuThread>> threads_;
  bool step_over_failed_fwait_ = false;  // HostProfile::step_over_failed_fwait
  std::unique_ptr<RunControl> control_;
  devices::Bus pio_bus_{"port I/O"};
  devices::Bus mmio_bus_{"MMIO"};
  std::shared_ptr<devices::Serial> serial_;
  std::shared_ptr<devices::IrqLine> serial_irq_;
  struct Disk {
    std::shared_ptr<devices::virtio::VirtioBlock> device;
    std::shared_ptr<devices::virtio::MmioTransport> transport;
    std::optional<devices::virtio::MmioTransportState> quiesced_state;
  };
  std::shared_ptr<devices::virtio::IoeventfdRegistrar> ioeventfds_;
  std::vector<Disk> disks_;
  VmState state_ = VmState::kCreated;
  // kvmclock at the moment of the pause, restored on resume.
  std::optional<uint64_t> paused_clock_;
};

}  // namespace forkvmm
