// `forkvmm run`: boot a guest in the foreground.
#include <unistd.h>

#include <cstdio>
#include <memory>
#include <string>

#include <fmt/core.h>

#include "tools/command.h"
#include "tools/guest_paths.h"
#include "vmm/base/log.h"
#include "vmm/base/units.h"
#include "vmm/console.h"
#include "vmm/host.h"
#include "vmm/vm.h"
#include "vmm/vm_runner.h"

namespace forkvmm::cli {
namespace {

struct RunArguments {
  std::string kernel;
  std::string initrd;
  std::string command_line;
  bool command_line_given = false;
  std::string memory = "512M";
  uint32_t cpus = 1;
  std::string serial_log;
  bool pit = false;
  bool no_hugepages = false;
  bool stats = false;
  bool no_stdin = false;
};

constexpr const char* kDefaultCommandLine = "console=ttyS0 reboot=k panic=-1";

void Fail(const std::string& message) { std::fprintf(stderr, "forkvmm run: %s\n", message.c_str()); }

// Fills in the project's own guest where the user named no kernel.
Status ApplyGuestDefaults(RunArguments& args) {
  if (!args.kernel.empty()) {
    if (!args.command_line_given) args.command_line = kDefaultCommandLine;
    return Ok();
  }
  std::string directory = DefaultGuestDirectory();
  if (access((directory + "/vmlinux").c_str(), R_OK) != 0) {
    return Error(fmt::format("no --kernel given and no guest build at {}; build it with "
                             "guest-kernel/build.sh or pass --kernel",
                             directory));
  }
  args.kernel = directory + "/vmlinux";
  if (args.initrd.empty()) args.initrd = directory + "/initramfs.cpio";
  if (!args.command_line_given) {
    std::string recommended = ReadTrimmedFile(directory + "/cmdline");
    args.command_line = recommended.empty() ? kDefaultCommandLine : recommended;
  }
  return Ok();
}

int Run(RunArguments& args) {
  Status defaults = ApplyGuestDefaults(args);
  if (!defaults.ok()) {
    Fail(defaults.error().message());
    return 1;
  }
  auto memory = ParseSize(args.memory, uint64_t{1} << 20);
  if (!memory.ok()) {
    Fail(fmt::format("--mem: {}", memory.error().message()));
    return 1;
  }
  VmConfig config;
  config.kernel_path = args.kernel;
  config.initrd_path = args.initrd;
  config.command_line = args.command_line;
  config.ram_bytes = *memory;
  config.vcpu_count = args.cpus;
  config.create_pit = args.pit;
  config.transparent_hugepages = !args.no_hugepages;

  std::shared_ptr<devices::ByteSink> console;
  if (args.serial_log.empty()) {
    console = std::make_shared<FdSink>(STDOUT_FILENO);
  } else {
    auto sink = FdSink::Open(args.serial_log);
    if (!sink.ok()) {
      Fail(fmt::format("--serial-log: {}", sink.error().message()));
      return 1;
    }
    console = *sink;
  }

  HostProfile host = DetectHost();
  LOG_INFO("{}", host.Describe());
  auto vm = Vm::Create(config, host, console);
  if (!vm.ok()) {
    Fail(vm.error().message());
    return 1;
  }
  auto exit = RunVm(**vm, {.attach_stdin = !args.no_stdin, .print_stats = args.stats});
  if (!exit.ok()) {
    Fail(exit.error().message());
    return 1;
  }
  if (exit->reason == VmExit::Reason::kGuestReset || exit->status == 0) {
    LOG_INFO("VM stopped: {}", exit->message);
  } else {
    Fail(exit->message);
  }
  return exit->status;
}

}  // namespace

Command AddRunCommand(CLI::App& parent) {
  auto args = std::make_shared<RunArguments>();
  CLI::App* app = parent.add_subcommand("run", "Boot a VM in the foreground");
  app->add_option("--kernel", args->kernel,
                  "Kernel to boot: an uncompressed vmlinux ELF or a bzImage (default: the "
                  "project's guest build)")
      ->check(CLI::ExistingFile);
  app->add_option("--initrd", args->initrd, "Initial RAM disk (cpio, optionally compressed)")
      ->check(CLI::ExistingFile);
  app->add_option_function<std::string>(
      "--cmdline",
      [args](const std::string& value) {
        args->command_line = value;
        args->command_line_given = true;
      },
      fmt::format("Kernel command line (default: the guest build's, or \"{}\")",
                  kDefaultCommandLine));
  app->add_option("--mem", args->memory,
                  "Guest RAM: a number of MiB, or a size with a K, M, G or T suffix")
      ->capture_default_str();
  app->add_option("--cpus", args->cpus, "Number of vCPUs")->capture_default_str();
  app->add_option("--serial-log", args->serial_log,
                  "Append the guest's console output to this file instead of stdout");
  app->add_flag("--pit", args->pit, "Give the guest KVM's in-kernel i8254 PIT (off by default)");
  app->add_flag("--no-hugepages", args->no_hugepages,
                "Do not ask for transparent huge pages for guest RAM");
  app->add_flag("--no-stdin", args->no_stdin, "Do not forward stdin to the guest's serial port");
  app->add_flag("--stats", args->stats,
                "Print per-vCPU exit counts and time in guest and VMM when the VM stops");
  app->footer("The guest ends the VM by resetting the machine (reboot=k); Ctrl-A x quits.");
  return {app, [args] { return Run(*args); }};
}

}  // namespace forkvmm::cli
