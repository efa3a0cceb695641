// Boots test guests under QEMU through their Xen PVH note, the path that
// lets the same binaries run as the peer in benchmarks. The guest then
// writes its console to port 0xe9 and exits through isa-debug-exit, which
// makes QEMU's exit status (code << 1) | 1.
#include <unistd.h>

#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "tests/integration/test_support.h"

namespace forkvmm::integration {
namespace {

using namespace std::chrono_literals;

// Returns the path of `program` in $PATH, or "".
std::string FindInPath(const std::string& program) {
  const char* path = std::getenv("PATH");
  std::istringstream directories(path != nullptr ? path : "");
  std::string directory;
  while (std::getline(directories, directory, ':')) {
    std::string candidate = directory + "/" + program;
    if (access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return "";
}

// QEMU microvm with KVM. IA32_ARCH_CAPABILITIES is hidden because QEMU 7.2
// aborts when KVM rejects that MSR, as kvm_pvm does, and the guests do not
// use it.
std::vector<std::string> QemuCommand(const std::string& qemu, const std::string& guest,
                                     const std::string& directory) {
  return {qemu,          "-M",       "microvm",  "-enable-kvm",
          "-cpu",        "host,-arch-capabilities", "-m", "64",
          "-nodefaults", "-no-user-config", "-display", "none",
          "-no-reboot",  "-kernel",  GuestPath(guest),
          "-device",     "isa-debug-exit,iobase=0xf4,iosize=4",
          "-debugcon",   "file:" + directory + "/debugcon.txt",
          "-serial",     "file:" + directory + "/serial.txt"};
}

TEST(QemuTest, SerialGuestBootsThroughPvhNote) {
  SKIP_WITHOUT_KVM();
  std::string qemu = FindInPath("qemu-system-x86_64");
  if (qemu.empty()) GTEST_SKIP() << "skipped: qemu-system-x86_64 is not installed";
  TemporaryDirectory directory;
  ProcessResult result =
      RunProcess(QemuCommand(qemu, "serial", directory.path()), {.timeout = 30s});
  ASSERT_FALSE(result.timed_out) << result.Describe();
  ASSERT_TRUE(result.exited) << result.Describe();
  EXPECT_EQ(result.exit_code, (0 << 1) | 1) << result.Describe();
  EXPECT_EQ(ReadFile(directory.path() + "/debugcon.txt"),
            "serial: ring-3 console through MMIO\n"
            "serial: PASS: registers, scratch, loopback, modem status, transmit and THR-empty "
            "interrupts\n");
  EXPECT_EQ(ReadFile(directory.path() + "/serial.txt"),
            "serial: line 1 through the 16550 UART\n"
            "serial: line 2 through the 16550 UART\n");
}

TEST(QemuTest, SyscallProbeBootsThroughPvhNote) {
  SKIP_WITHOUT_KVM();
  std::string qemu = FindInPath("qemu-system-x86_64");
  if (qemu.empty()) GTEST_SKIP() << "skipped: qemu-system-x86_64 is not installed";
  std::string module = LoadedKvmModule();
  if (module.empty()) GTEST_SKIP() << "skipped: no kvm_pvm, kvm_intel or kvm_amd module loaded";
  int expected = module == "kvm_pvm" ? 1 : 0;
  TemporaryDirectory directory;
  ProcessResult result =
      RunProcess(QemuCommand(qemu, "syscall_probe", directory.path()), {.timeout = 30s});
  ASSERT_FALSE(result.timed_out) << result.Describe();
  ASSERT_TRUE(result.exited) << result.Describe();
  EXPECT_EQ(result.exit_code, (expected << 1) | 1) << result.Describe();
}

}  // namespace
}  // namespace forkvmm::integration
