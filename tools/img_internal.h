// Shared pieces of the `forkvmm img` subcommands (tools/img_*.cc).
#pragma once

#include <sys/stat.h>

#include <cstdint>
#include <functional>
#include <string>

#include "devices/block/block_backend.h"
#include "vmm/base/result.h"

namespace forkvmm::cli::img {

// Returns the format named by `-f`, or probes the image when none was given.
// Only top images named on the command line are ever probed.
Result<block::ImageFormat> ResolveFormat(const std::string& path, const std::string& format_name);

// Calls `visit` with the path and stat of each layer of the backing chain
// from `path` down, opening each layer alone and read-only. Fails with one
// line naming the image whose backing file is already in the chain, or with
// the first error `visit` returns. A layer that cannot be opened, or that
// names a backing file without a format, ends the walk without an error:
// opening the whole chain reports those.
Status WalkBackingChain(const std::string& path, block::ImageFormat format,
                        const std::function<Status(const std::string&, const struct stat&)>& visit);

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
