// The `forkvmm` command-line tool.
#include <cstdio>
#include <vector>

#include "tools/command.h"
#include "vmm/base/log.h"

int main(int argc, char** argv) {
  CLI::App app{"forkvmm: a virtual machine monitor whose VMs fork like processes"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "forkvmm 0.1.0");
  bool verbose = false;
  app.add_flag("-v,--verbose", verbose, "Log debug messages");

  std::vector<forkvmm::cli::Command> commands;
  commands.push_back(forkvmm::cli::AddRunCommand(app));
  commands.push_back(forkvmm::cli::AddImgCommand(app));

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  if (verbose) forkvmm::SetLogLevel(forkvmm::LogLevel::kDebug);
  for (auto& command : commands) {
    if (command.app->parsed()) return command.run();
  }
  std::fputs("forkvmm: no command given; see forkvmm --help\n", stderr);
  return 2;
}
