// Times the KVM calls a fork child makes to rebuild its VM (the "restore"
// phase of a fork), one step at a time. The order is that of
// Vm::CreateMachine and Vm::Restore: KVM_CREATE_VM, the memory slot over
// touched guest RAM, the TSS and identity-map addresses, KVM_CREATE_IRQCHIP
// and KVM_CREATE_VCPU. Closing the VM at the end is timed too.
//
// After the rebuilds it times fork() of this process, whose guest RAM is
// mapped and touched: RUNS times with no KVM VM ("fork_no_vm"), then RUNS
// times with one VM whose memory slot covers that RAM ("fork_with_vm"). No
// guest runs, so KVM has no mappings of the RAM that a fork would have to
// drop. The forks come after the rebuilds so that they cannot change the
// rebuilds' timing.
//
// Each step reports wall time and the calling thread's CPU time. The
// difference is time the thread did not run: waiting for a CPU or blocked
// in the kernel (SRCU grace periods, for one).
//
// Usage: kvm_setup_bench [--mem-mib N] [--runs N] [--no-hugepages]
// Prints JSON: per step, median and 90th percentile of wall and CPU
// milliseconds.
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "vmm/boot/boot_layout.h"
#include "vmm/kvm/kvm.h"

namespace {

struct Sample {
  double wall_ms;
  double cpu_ms;
};

double ThreadCpuMilliseconds() {
  timespec now{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &now);
  return static_cast<double>(now.tv_sec) * 1e3 + static_cast<double>(now.tv_nsec) / 1e6;
}

double WallMilliseconds() {
  return std::chrono::duration<double, std::milli>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// Runs `step` and appends its wall and CPU time to `samples[name]`.
template <typename Step>
auto Timed(std::map<std::string, std::vector<Sample>>& samples, const std::string& name,
           Step&& step) {
  double wall = WallMilliseconds();
  double cpu = ThreadCpuMilliseconds();
  auto result = step();
  samples[name].push_back({WallMilliseconds() - wall, ThreadCpuMilliseconds() - cpu});
  return result;
}

double Percentile(std::vector<double> values, double fraction) {
  std::sort(values.begin(), values.end());
  size_t rank = static_cast<size_t>(fraction * static_cast<double>(values.size()) + 0.999999);
  return values[std::clamp<size_t>(rank, 1, values.size()) - 1];
}

bool Fail(const std::string& operation, const forkvmm::Error& error) {
  std::fprintf(stderr, "kvm_setup_bench: %s: %s\n", operation.c_str(), error.message().c_str());
  return false;
}

// Times fork() in the parent, from the call until it returns. The child
// exits at once, and reaping it is not timed.
bool TimedFork(std::map<std::string, std::vector<Sample>>& samples, const std::string& name) {
  pid_t pid = Timed(samples, name, [] { return fork(); });
  if (pid == 0) _exit(0);
  if (pid < 0) {
    std::perror("kvm_setup_bench: fork");
    return false;
  }
  waitpid(pid, nullptr, 0);
  return true;
}

// One rebuild of a VM over `ram`. Returns false after printing the error.
bool RebuildOnce(const forkvmm::kvm::KvmSystem& system, void* ram, uint64_t ram_bytes,
                 std::map<std::string, std::vector<Sample>>& samples) {
  using forkvmm::kvm::KvmVm;
  auto vm = Timed(samples, "create_vm", [&] { return system.CreateVm(); });
  if (!vm.ok()) return Fail("KVM_CREATE_VM", vm.error());
  // `ram` stays mapped for the whole program, longer than the VM.
  auto slot = Timed(samples, "memory_slot",
                    [&] { return vm->SetUserMemoryRegion(0, 0, ram_bytes, ram); });
  if (!slot.ok()) return Fail("KVM_SET_USER_MEMORY_REGION", slot.error());
  auto addresses = Timed(samples, "tss_identity_map", [&] {
    forkvmm::Status tss = vm->SetTssAddress(forkvmm::boot::kKvmTssAddress);
    return tss.ok() ? vm->SetIdentityMapAddress(forkvmm::boot::kKvmIdentityMapAddress) : tss;
  });
  if (!addresses.ok()) return Fail("KVM_SET_TSS_ADDR", addresses.error());
  auto irqchip = Timed(samples, "create_irqchip", [&] { return vm->CreateIrqchip(); });
  if (!irqchip.ok()) return Fail("KVM_CREATE_IRQCHIP", irqchip.error());
  auto vcpu = Timed(samples, "create_vcpu", [&] { return vm->CreateVcpu(0); });
  if (!vcpu.ok()) return Fail("KVM_CREATE_VCPU", vcpu.error());
  // Closing the vCPU and then the VM: the kernel tears the VM down here.
  Timed(samples, "close_vm", [&] {
    { forkvmm::kvm::KvmVcpu closed_vcpu = std::move(*vcpu); }
    { KvmVm closed_vm = std::move(*vm); }
    return 0;
  });
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  uint64_t mem_mib = 512;
  int runs = 30;
  bool hugepages = true;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--mem-mib" && i + 1 < argc) {
      mem_mib = std::strtoull(argv[++i], nullptr, 10);
    } else if (arg == "--runs" && i + 1 < argc) {
      runs = std::atoi(argv[++i]);
    } else if (arg == "--no-hugepages") {
      hugepages = false;
    } else {
      std::fprintf(stderr, "usage: kvm_setup_bench [--mem-mib N] [--runs N] [--no-hugepages]\n");
      return 2;
    }
  }
  uint64_t ram_bytes = mem_mib << 20;
  void* ram = mmap(nullptr, ram_bytes, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (ram == MAP_FAILED) {
    std::perror("kvm_setup_bench: mmap of guest RAM");
    return 1;
  }
  if (hugepages) madvise(ram, ram_bytes, MADV_HUGEPAGE);
  std::memset(ram, 1, ram_bytes);  // touched, as a running guest's RAM is

  auto system = forkvmm::kvm::KvmSystem::Open();
  if (!system.ok()) {
    Fail("opening /dev/kvm", system.error());
    return 1;
  }
  std::map<std::string, std::vector<Sample>> samples;
  for (int run = 0; run < runs; ++run) {
    if (!RebuildOnce(*system, ram, ram_bytes, samples)) return 1;
  }
  for (int run = 0; run < runs; ++run) {
    if (!TimedFork(samples, "fork_no_vm")) return 1;
  }
  {
    auto vm = system->CreateVm();
    if (!vm.ok()) {
      Fail("KVM_CREATE_VM", vm.error());
      return 1;
    }
    auto slot = vm->SetUserMemoryRegion(0, 0, ram_bytes, ram);
    if (!slot.ok()) {
      Fail("KVM_SET_USER_MEMORY_REGION", slot.error());
      return 1;
    }
    for (int run = 0; run < runs; ++run) {
      if (!TimedFork(samples, "fork_with_vm")) return 1;
    }
  }

  std::printf("{\"mem_mib\": %llu, \"hugepages\": %s, \"runs\": %d, \"steps\": {",
              static_cast<unsigned long long>(mem_mib), hugepages ? "true" : "false", runs);
  const char* separator = "";
  for (const char* step : {"create_vm", "memory_slot", "tss_identity_map", "create_irqchip",
                           "create_vcpu", "close_vm", "fork_no_vm", "fork_with_vm"}) {
    std::vector<double> wall, cpu;
    for (const Sample& sample : samples[step]) {
      wall.push_back(sample.wall_ms);
      cpu.push_back(sample.cpu_ms);
    }
    std::printf("%s\n  \"%s\": {\"wall_median_ms\": %.3f, \"wall_p90_ms\": %.3f, "
                "\"cpu_median_ms\": %.3f, \"cpu_p90_ms\": %.3f}",
                separator, step, Percentile(wall, 0.5), Percentile(wall, 0.9),
                Percentile(cpu, 0.5), Percentile(cpu, 0.9));
    separator = ",";
  }
  std::printf("\n}}\n");
  return 0;
}
