#include "vmm/probe.h"

#include <sys/mman.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include <fmt/core.h>

#include "vmm/base/unique_fd.h"
#include "vmm/vm.h"

extern "C" const unsigned char forkvmm_syscall_probe_start[];
extern "C" const unsigned char forkvmm_syscall_probe_end[];

namespace forkvmm {
namespace {

using nlohmann::json;

constexpr auto kProbeTimeout = std::chrono::seconds(20);
constexpr int kCacheVersion = 1;

class DiscardSink : public devices::ByteSink {
 public:
  void Write(std::span<const uint8_t>) override {}
};

std::string BootId() {
  std::ifstream in("/proc/sys/kernel/random/boot_id");
  std::string id;
  std::getline(in, id);
  return id;
}

Result<GuestUserspaceSupport> RunProbe(const HostProfile& host) {
  UniqueFd guest(memfd_create("forkvmm-syscall-probe", MFD_CLOEXEC));
  if (!guest.valid()) return Error::FromErrno("memfd_create", "syscall probe");
  size_t size = static_cast<size_t>(forkvmm_syscall_probe_end - forkvmm_syscall_probe_start);
  if (write(guest.get(), forkvmm_syscall_probe_start, size) != static_cast<ssize_t>(size)) {
    return Error::FromErrno("write", "syscall probe");
  }
  VmConfig config;
  config.kernel_path = fmt::format("/proc/self/fd/{}", guest.get());
  config.ram_bytes = 16 << 20;
  config.vcpu_count = 1;
  config.transparent_hugepages = false;
  ASSIGN_OR_RETURN_CTX(std::unique_ptr<Vm> vm,
                       Vm::Create(config, host, std::make_shared<DiscardSink>()),
                       "syscall probe");
  vm->Start();
  // The probe ends within milliseconds; a watchdog bounds a guest that hangs.
  std::mutex mutex;
  std::condition_variable done_changed;
  bool done = false;
  std::thread watchdog([&] {
    std::unique_lock lock(mutex);
    if (!done_changed.wait_for(lock, kProbeTimeout, [&] { return done; })) {
      vm->RequestStop({VmExit::Reason::kError, 1, "the syscall probe timed out"});
    }
  });
  VmExit exit = vm->WaitForStop();
  {
    std::lock_guard lock(mutex);
    done = true;
  }
  done_changed.notify_all();
  watchdog.join();

  GuestUserspaceSupport support;
  if (exit.reason == VmExit::Reason::kGuestExitCode && exit.status == 0) {
    support.supported = true;
  } else if (exit.reason == VmExit::Reason::kGuestExitCode && exit.status == 1) {
    support.reason = fmt::format(
        "SYSCALL from guest user mode arrives at the guest kernel's entry point still in user "
        "mode on this host ({}), so a Linux guest dies at its first system call",
        host.kvm_module.empty() ? "unknown KVM module" : host.kvm_module);
  } else {
    support.reason = fmt::format("the syscall probe guest failed: {}", exit.message);
  }
  return support;
}

}  // namespace

Result<GuestUserspaceSupport> ProbeGuestUserspace(const HostProfile& host,
                                                  const std::string& cache_directory) {
  std::string cache_path = cache_directory + "/probe.json";
  std::string boot_id = BootId();
  {
    std::ifstream in(cache_path);
    json cached = json::parse(in, nullptr, false);
    if (!cached.is_discarded() && cached.is_object() &&
        cached.value("version", 0) == kCacheVersion && cached.value("boot_id", "") == boot_id &&
        !boot_id.empty()) {
      return GuestUserspaceSupport{cached.value("guest_userspace", false),
                                   cached.value("reason", ""), true};
    }
  }
  ASSIGN_OR_RETURN(GuestUserspaceSupport support, RunProbe(host));
  json record = {{"version", kCacheVersion},
                 {"boot_id", boot_id},
                 {"guest_userspace", support.supported},
                 {"reason", support.reason}};
  std::string temporary = cache_path + ".tmp";
  std::ofstream(temporary) << record.dump(2) << '\n';
  std::rename(temporary.c_str(), cache_path.c_str());
  return support;
}

}  // namespace forkvmm
