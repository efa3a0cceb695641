// Shared pieces of the `forkvmm img` subcommands (tools/img_*.cc).
#pragma once

#include <cstdint>
#include <string>

#include "devices/block/block_backend.h"
#include "vmm/base/result.h"

namespace forkvmm::cli::img {

// Returns the format named by `-f`, or probes the image when none was given.
// Only top images named on the command line are ever probed.
Result<block::ImageFormat> ResolveFormat(const std::string& path, const std::string& format_name);

// Formats a byte count with a binary unit, three significant digits ("1.5 GiB").
std::string HumanSize(uint64_t bytes);

// Prints "forkvmm: <message>" to stderr; returns `exit_code`.
int Fail(const Error& error, int exit_code = 1);

struct InfoArgs {
  std::string path;
  std::string format;
  bool json = false;
  bool backing_chain = false;
};
int RunInfo(const InfoArgs& args);

struct CheckArgs {
  std::string path;
  std::string format;
  std::string repair;  // "", "leaks" or "all"
  bool json = false;
  bool quiet = false;
};
// Exit codes: 0 consistent, 1 check not completed, 2 corruptions,
// 3 leaks only, 63 the format has nothing to check (as qemu-img uses them).
int RunCheck(const CheckArgs& args);

}  // namespace forkvmm::cli::img
