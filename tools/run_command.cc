// `forkvmm run`: boot a guest, in the foreground or detached.
#include <fcntl.h>
#include <sys/sysinfo.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <optional>
#include <memory>
#include <string>

#include <fmt/core.h>

#include "devices/block/image.h"
#include "tools/command.h"
#include "tools/guest_paths.h"
#include "vmm/base/log.h"
#include "memory/layout.h"
#include "vmm/base/units.h"
#include "vmm/console.h"
#include "vmm/host.h"
#include "vmm/vm.h"
#include "vmm/vm_process.h"

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
  bool no_initrd = false;
  bool detach = false;
  bool paused = false;
  std::string name;
  std::string runtime_dir;
  std::vector<std::string> disks;
};

constexpr const char* kDefaultCommandLine = "console=ttyS0 reboot=k panic=-1";

void Fail(const std::string& message) { std::fprintf(stderr, "forkvmm run: %s\n", message.c_str()); }

// Parses --mem: a size that the host can back and the VM layout supports.
Result<uint64_t> ParseMemory(const std::string& text) {
  auto bytes = ParseSize(text, uint64_t{1} << 20);
  if (!bytes.ok()) return Error(fmt::format("--mem {}: {}", text, bytes.error().message()));
  if (*bytes < memory::kMinRamBytes || *bytes > memory::kMaxRamBytes) {
    return Error(fmt::format("--mem {}: invalid guest RAM size: expected {} MiB to {} GiB", text,
                             memory::kMinRamBytes >> 20, memory::kMaxRamBytes >> 30));
  }
  // Guest RAM is reserved lazily, but a guest larger than the host's memory
  // is killed by the OOM killer once it uses it.
  struct sysinfo info {};
  if (sysinfo(&info) == 0) {
    uint64_t host = (uint64_t{info.totalram} + info.totalswap) * info.mem_unit;
    if (*bytes > host) {
      return Error(fmt::format("--mem {}: invalid guest RAM size: larger than this host's {} MiB "
                               "of RAM and swap",
                               text,
                               host >> 20));
    }
  }
  return *bytes;
}

// Parses --disk PATH[,ro][,format=qcow2|raw].
Result<DiskConfig> ParseDisk(const std::string& spec) {
  DiskConfig disk;
  std::vector<std::string> parts;
  size_t start = 0;
  while (true) {
    size_t comma = spec.find(',', start);
    parts.push_back(spec.substr(start, comma == std::string::npos ? std::string::npos : comma - start));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  disk.path = parts[0];
  if (disk.path.empty()) return Error(fmt::format("--disk '{}': missing path", spec));
  std::optional<block::ImageFormat> format;
  for (size_t i = 1; i < parts.size(); ++i) {
    if (parts[i] == "ro") {
      disk.read_only = true;
    } else if (parts[i].starts_with("format=")) {
      auto parsed = block::ParseFormatName(parts[i].substr(7));
      if (!parsed.ok()) return Error(fmt::format("--disk '{}': {}", spec, parsed.error().message()));
      format = *parsed;
    } else {
      return Error(fmt::format("--disk '{}': unknown option '{}'; expected ro or format=qcow2|raw",
                               spec, parts[i]));
    }
  }
  if (!format) {
    // Only the image named on the command line is ever probed; backing
    // files must state their format.
    auto probed = block::ProbeImageFormat(disk.path);
    if (!probed.ok()) return Error(fmt::format("--disk: {}", probed.error().message()));
    format = *probed;
  }
  disk.format = *format;
  disk.overlay_stem = std::filesystem::path(disk.path).stem().string();
  return disk;
}

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
  if (args.initrd.empty() && !args.no_initrd) args.initrd = directory + "/initramfs.cpio";
  if (!args.command_line_given) {
    std::string recommended = ReadTrimmedFile(directory + "/cmdline");
    args.command_line = recommended.empty() ? kDefaultCommandLine : recommended;
  }
  return Ok();
}

// Reads the detached VM process's report: "ok <id>" or "error <message>".
int WaitForDetachedVm(int ready_fd) {
  std::string report;
  char buffer[512];
  ssize_t n;
  while ((n = read(ready_fd, buffer, sizeof(buffer))) > 0) {
    report.append(buffer, static_cast<size_t>(n));
    if (report.find('\n') != std::string::npos) break;
  }
  report = report.substr(0, report.find('\n'));
  if (report.starts_with("ok ")) {
    std::printf("%s\n", report.substr(3).c_str());
    return 0;
  }
  Fail(report.starts_with("error ") ? report.substr(6)
                                    : "the VM process exited before its VM started");
  return 1;
}

// Points stdin at /dev/null and stdout and stderr at `log_path`.
void RedirectStdio(const std::string& log_path) {
  int null_fd = open("/dev/null", O_RDWR | O_CLOEXEC);
  int log_fd = open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  if (null_fd >= 0) dup2(null_fd, STDIN_FILENO);
  if (log_fd < 0) log_fd = null_fd;
  if (log_fd >= 0) {
    dup2(log_fd, STDOUT_FILENO);
    dup2(log_fd, STDERR_FILENO);
  }
  if (null_fd > STDERR_FILENO) close(null_fd);
  if (log_fd > STDERR_FILENO && log_fd != null_fd) close(log_fd);
}

int Run(RunArguments& args) {
  Status defaults = ApplyGuestDefaults(args);
  if (!defaults.ok()) {
    Fail(defaults.error().message());
    return 1;
  }
  auto memory = ParseMemory(args.memory);
  if (!memory.ok()) {
    Fail(memory.error().message());
    return 1;
  }
  VmProcessOptions options;
  options.config.kernel_path = args.kernel;
  options.config.initrd_path = args.initrd;
  options.config.command_line = args.command_line;
  options.config.ram_bytes = *memory;
  options.config.vcpu_count = args.cpus;
  options.config.create_pit = args.pit;
  options.config.transparent_hugepages = !args.no_hugepages;
  for (const std::string& spec : args.disks) {
    auto disk = ParseDisk(spec);
    if (!disk.ok()) {
      Fail(disk.error().message());
      return 1;
    }
    options.config.disks.push_back(std::move(disk).value());
  }
  options.host = DetectHost();
  options.runtime_root = args.runtime_dir;
  options.name = args.name;
  options.foreground_console = !args.detach;
  options.print_stats = args.stats;
  options.serial_log = args.serial_log;

  if (args.detach) {
    int pipe_fds[2];
    if (pipe2(pipe_fds, O_CLOEXEC) != 0) {
      Fail(Error::FromErrno("pipe2").message());
      return 1;
    }
    std::fflush(nullptr);
    pid_t pid = fork();
    if (pid < 0) {
      Fail(Error::FromErrno("fork").message());
      return 1;
    }
    if (pid > 0) {
      close(pipe_fds[1]);
      int status = WaitForDetachedVm(pipe_fds[0]);
      close(pipe_fds[0]);
      return status;
    }
    close(pipe_fds[0]);
    setsid();
    RedirectStdio("/dev/null");
    options.ready_fd = pipe_fds[1];
  }

  int ready_fd = options.ready_fd;
  std::string host_description = options.host.Describe();
  auto process = VmProcess::Boot(std::move(options));
  if (!process.ok()) {
    if (ready_fd >= 0) {
      std::string line = "error " + process.error().message() + "\n";
      ssize_t unused = write(ready_fd, line.data(), line.size());
      (void)unused;
    }
    Fail(process.error().message());
    return 1;
  }
  // Logged once the VM exists, so a refused configuration prints one line.
  LOG_INFO("{}", host_description);
  const VmRecord& record = (*process)->record();
  if (args.detach) {
    auto runtime = RuntimeDirectory::Open(args.runtime_dir);
    if (runtime.ok()) RedirectStdio(runtime->VmDirectory(record.id) + "/vmm.log");
  } else {
    LOG_INFO("VM {} started{}; fork it with: forkvmm fork {}", record.id,
             record.name.empty() ? "" : " as " + record.name, record.id);
  }
  VmExit exit = (*process)->Run(args.paused);
  if (exit.reason == VmExit::Reason::kGuestReset || exit.status == 0) {
    LOG_INFO("VM {} stopped: {}", record.id, exit.message);
  } else {
    Fail(exit.message);
  }
  return exit.status;
}

}  // namespace

Command AddRunCommand(CLI::App& parent) {
  auto args = std::make_shared<RunArguments>();
  CLI::App* app = parent.add_subcommand("run", "Boot a VM (with --detach, in the background)");
  app->add_option("--kernel", args->kernel,
                  "Kernel to boot: an uncompressed vmlinux ELF or a bzImage (default: the "
                  "project's guest build)")
      ->check(CLI::ExistingFile);
  app->add_option("--initrd", args->initrd, "Initial RAM disk (cpio, optionally compressed)")
      ->check(CLI::ExistingFile);
  app->add_flag("--no-initrd", args->no_initrd,
                "Boot without an initial RAM disk (for a root filesystem on --disk)");
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
  app->add_option("--disk", args->disks,
                  "A virtio-blk disk: PATH[,ro][,format=qcow2|raw]; repeat for more (the first is "
                  "/dev/vda). Without format= the file's first bytes decide; give it for images a "
                  "guest could have written");
  app->add_option("--serial-log", args->serial_log,
                  "Also append the guest's console output to this file, which stays after the "
                  "VM stops (\"{id}\" becomes the VM id)");
  app->add_flag("--pit", args->pit, "Give the guest KVM's in-kernel i8254 PIT (off by default)");
  app->add_flag("--no-hugepages", args->no_hugepages,
                "Do not ask for transparent huge pages for guest RAM");
  app->add_flag("--no-stdin", args->no_stdin, "Do not forward stdin to the guest's serial port");
  app->add_flag("-d,--detach", args->detach,
                "Run the VM in the background; print its id once it runs");
  app->add_option("--name", args->name, "A unique name to refer to the VM by");
  app->add_flag("--paused", args->paused, "Create the VM paused; `forkvmm resume` starts it");
  app->add_option("--runtime-dir", args->runtime_dir,
                  "Where VMs register (default: $FORKVMM_RUNTIME_DIR, $XDG_RUNTIME_DIR/forkvmm "
                  "or /run/forkvmm)");
  app->add_flag("--stats", args->stats,
                "Print per-vCPU exit counts and time in guest and VMM when the VM stops, and "
                "the console bytes a serial log lost to write errors");
  app->footer("The guest ends the VM by resetting the machine (reboot=k); Ctrl-A x quits.");
  return {app, [args] { return Run(*args); }};
}

}  // namespace forkvmm::cli
