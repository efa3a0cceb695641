// Shared helpers of the integration tests: where the forkvmm binary and the
// test guests are, whether KVM is usable, and running `forkvmm run`.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "tests/integration/process.h"

namespace forkvmm::integration {

// The forkvmm binary under test (set by the build).
std::string ForkvmmPath();
// Path of the built test guest `name` ("serial" -> .../serial.elf).
std::string GuestPath(const std::string& name);

// Returns why /dev/kvm cannot be opened read-write, or nothing if it can.
std::optional<std::string> KvmUnavailableReason();

// The KVM module loaded on this host: "kvm_pvm", "kvm_intel", "kvm_amd" or "".
std::string LoadedKvmModule();

// Runs `forkvmm run --no-stdin <arguments>` with FORKVMM_RUNTIME_DIR set to
// a directory of this test process, so the VMs register nowhere else.
ProcessResult RunForkvmm(const std::vector<std::string>& arguments, ProcessOptions options);

// A directory under $TMPDIR (or /tmp) that is removed with its contents when
// the object is destroyed.
class TemporaryDirectory {
 public:
  TemporaryDirectory();
  ~TemporaryDirectory();
  TemporaryDirectory(const TemporaryDirectory&) = delete;
  TemporaryDirectory& operator=(const TemporaryDirectory&) = delete;

  const std::string& path() const { return path_; }
  // Writes `contents` to a new file `name` in the directory and returns its
  // path.
  std::string WriteFile(const std::string& name, const std::string& contents) const;

 private:
  std::string path_;
};

// Reads a whole file. If it cannot, fails the test and returns "".
std::string ReadFile(const std::string& path);

}  // namespace forkvmm::integration

// Every integration test starts with this: without a usable /dev/kvm the
// test is reported as skipped, with the reason.
#define SKIP_WITHOUT_KVM()                                                        \
  do {                                                                            \
    if (auto reason = ::forkvmm::integration::KvmUnavailableReason()) {           \
      GTEST_SKIP() << "skipped: /dev/kvm unavailable: " << *reason;               \
    }                                                                             \
  } while (false)
