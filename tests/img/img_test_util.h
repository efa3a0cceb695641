// Helpers for tests that run forkvmm-img, qemu-img and qemu-io as processes.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace forkvmm::block::testing {

struct ProcessResult {
  int exit_code = -1;  // when the process exited
  int signal = 0;      // when a signal killed it
  std::string out;
  std::string err;
};

// Limits for a child process, so a hang or a runaway allocation fails the
// test instead of stalling the machine.
struct ProcessLimits {
  uint64_t cpu_seconds = 120;
  // 0: unlimited. Not applied in AddressSanitizer builds, which need the
  // address space for shadow memory.
  uint64_t address_space_bytes = 0;
};

// Runs `argv` with stdout and stderr captured. argv[0] is looked up in PATH.
ProcessResult RunProcess(const std::vector<std::string>& argv, const ProcessLimits& limits = {});

// The forkvmm-img binary built beside the tests.
std::string ForkvmmImg();

// True when qemu-img and qemu-io are in PATH.
bool HaveQemu();

// Splits text into lines, dropping a trailing empty line.
std::vector<std::string> Lines(const std::string& text);

}  // namespace forkvmm::block::testing

// Skips the current test, saying why, when qemu-img or qemu-io are missing.
#define SKIP_WITHOUT_QEMU()                                                          \
  do {                                                                               \
    if (!::forkvmm::block::testing::HaveQemu()) {                                    \
      GTEST_SKIP() << "qemu-img or qemu-io not found in PATH (Debian: qemu-utils)";  \
    }                                                                                \
  } while (0)
