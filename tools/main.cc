// The `forkvmm` command-line tool.
#include <cstdio>
#include <vector>

#include "tools/command.h"
#include "vmm/base/log.h"

int main(int argc, char** argv) {
  CLI::App app{"forkvmm: a virtual machine monitor whose VMs fork like processes"};
  app.require_subcommand(0, 1);
  std::string fork_vm;
  app.add_option("--fork", fork_vm, "Fork the VM with this id or name (same as `forkvmm fork`)");
  app.set_version_flag("--version", "forkvmm 0.1.0");
  bool verbose = false;
  app.add_flag("-v,--verbose", verbose, "Log debug messages");

  std::vector<forkvmm::cli::Command> commands;
  commands.push_back(forkvmm::cli::AddRunCommand(app));
  commands.push_back(forkvmm::cli::AddImgCommand(app));
  commands.push_back(forkvmm::cli::AddProbeCommand(app));
  for (auto& command : forkvmm::cli::AddVmCommands(app)) commands.push_back(std::move(command));

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    // One line naming the command, like every other forkvmm error, and the
    // usual exit status for a usage error.
    std::string command = "forkvmm";
    for (CLI::App* sub = &app; sub != nullptr;) {
      CLI::App* next = nullptr;
      for (CLI::App* candidate : sub->get_subcommands()) {
        if (candidate->parsed()) next = candidate;
      }
      if (next != nullptr) command += " " + next->get_name();
      sub = next;
    }
    std::fprintf(stderr, "%s: %s (see %s --help)\n", command.c_str(), e.what(), command.c_str());
    return 2;
  }
  if (verbose) forkvmm::SetLogLevel(forkvmm::LogLevel::kDebug);
  for (auto& command : commands) {
    if (command.app->parsed()) return command.run();
  }
  if (!fork_vm.empty()) return forkvmm::cli::RunForkShortcut(fork_vm, "");
  std::fputs("forkvmm: no command given; see forkvmm --help\n", stderr);
  return 2;
}
