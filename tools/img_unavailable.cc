// Stands in for `forkvmm img` until the qcow2 tools are built in.
#include <cstdio>

#include "tools/command.h"

namespace forkvmm::cli {

Command AddImgCommand(CLI::App& parent) {
  CLI::App* app = parent.add_subcommand("img", "Disk image tools (not built in this binary)");
  return {app, [] {
            std::fputs("forkvmm img: not built in this binary\n", stderr);
            return 1;
          }};
}

}  // namespace forkvmm::cli
