// How a `forkvmm` subcommand plugs into the CLI.
#pragma once

#include <CLI/CLI.hpp>

#include <functional>
#include <string>
#include <vector>

namespace forkvmm::cli {

// A subcommand added to the top-level CLI11 app. `run` is called after
// parsing when `app` was the subcommand given; it returns the process exit
// status. The options it reads are bound to storage that `run` owns.
struct Command {
  CLI::App* app = nullptr;
  std::function<int()> run;
};

// Each command module defines one of these (tools/<name>_command.cc).
Command AddRunCommand(CLI::App& parent);
Command AddImgCommand(CLI::App& parent);
Command AddProbeCommand(CLI::App& parent);
// fork, ls, pause, resume, kill, console, logs (tools/vm_commands.cc).
std::vector<Command> AddVmCommands(CLI::App& parent);
// `forkvmm --fork <vm>`: the same as `forkvmm fork <vm>`.
int RunForkShortcut(const std::string& vm, const std::string& runtime_dir);

}  // namespace forkvmm::cli
