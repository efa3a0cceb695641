// A VM process: one VM, its runtime directory entry, control socket and
// console, driven by an event loop on the main thread. Fork happens here:
// the process pauses its VM, captures the state, and fork()s; each child
// process builds a new KVM VM on the inherited copy-on-write guest RAM.
//
// Fork sequence, parent side (Fork()):
//   1. pause the vCPUs at a safe point; capture vCPU, irqchip, clock and
//      device state into plain structs;
//   2. per child: create its runtime entry and a status pipe, flush stdio,
//      fork();
//   3. resume at once if the VM was running; then collect each child's
//      "ok" or error line from its pipe and reply with the child ids.
// Child side (RunChild()): start a new session, close every inherited fd
// except guest RAM's and the status pipe, point stdio at its own log,
// rebuild the VM from the captured state, listen on its own control and
// console sockets, report "ok", and run. The parent's objects in the child's
// address space are abandoned, never destroyed: their threads do not exist
// there.
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "vmm/base/event_loop.h"
#include "vmm/console.h"
#include "vmm/control_server.h"
#include "vmm/host.h"
#include "vmm/runtime.h"
#include "vmm/vm.h"

namespace forkvmm {

struct VmProcessOptions {
  VmConfig config;
  HostProfile host;
  std::string runtime_root;  // empty: RuntimeDirectory::DefaultRoot()
  std::string name;
  // Copy console output to stdout and read console input from stdin.
  bool foreground_console = true;
  bool print_stats = false;
  // Also append console output to this file; "{id}" is replaced by the VM
  // id. Unlike the runtime directory's serial.log it stays after the VM.
  std::string serial_log;
  // Where to write "ok <id>\n" once the VM runs, or "error <message>\n";
  // -1 for none. `forkvmm run --detach` waits on it.
  int ready_fd = -1;
};

struct ForkRequest {
  uint32_t count = 1;
  bool paused = false;  // children start paused
  std::string name;     // child name; with count > 1, "-<n>" is appended
  // Also append each child's console output here ("{id}" is replaced).
  std::string serial_log;
};

// Parses the arguments of the control command `fork`: "count" (an integer
// from 1 to VmProcess::kMaxForkCount), "paused", "name" and "serial_log",
// each optional. Returns an error naming the first invalid one.
Result<ForkRequest> ParseForkRequest(const nlohmann::json& arguments);

struct ForkedChild {
  std::string id;
  std::string name;
  pid_t pid = 0;
  // From the fork request until the child reported its vCPU threads
  // started (parked, with --paused); the guest may not have run yet.
  double ready_ms = 0;
  // The child's own phase timings, "name_ms=value ..." (may be empty).
  std::string details;
};

// Where the time of one fork went.
struct ForkTiming {
  double prepare_ms = 0;      // ids, overlays, runtime entries, with the VM running
  double pause_ms = 0;        // from the pause request until every vCPU was parked
  double capture_ms = 0;      // disks quiesced, state captured, disk layers frozen
  double fork_ms = 0;         // the fork() calls
  double parent_held_ms = 0;  // from the pause request until this VM resumed
  double all_ready_ms = 0;    // from the request until every child reported ready_ms
};

class VmProcess {
 public:
  static constexpr uint32_t kMaxForkCount = 256;

  // Boots a new VM from `options.config` and registers it.
  static Result<std::unique_ptr<VmProcess>> Boot(VmProcessOptions options);
  ~VmProcess();

  const VmRecord& record() const { return record_; }

  // Runs until the VM stops and returns why. Removes the runtime entry.
  VmExit Run(bool start_paused = false);

  // Forks the VM into `request.count` children (see the file comment).
  // Must run on the event loop thread.
  Result<std::vector<ForkedChild>> Fork(const ForkRequest& request);

 private:
  explicit VmProcess(VmProcessOptions options) : options_(std::move(options)) {}
  // Registers the runtime entry, console and control socket around vm_.
  Status Attach(const RuntimeDirectory& runtime, VmRecord record);
  CommandReply HandleCommand(const std::string& command, const nlohmann::json& arguments);
  CommandReply HandleFork(const nlohmann::json& arguments);
  CommandReply HandlePmemsave(const nlohmann::json& arguments);
  nlohmann::json StatusJson() const;
  void OnSignal();
  void ReportReady(const std::string& line);

  struct ChildPlan {
    uint32_t index = 0;
    VmRecord record;
    int status_fd = -1;       // write end, for the child
    int status_read_fd = -1;  // read end, for this process
    bool forked = false;
    bool paused = false;
    std::string serial_log;
    std::vector<DiskConfig> disks;
  };
  struct Pending {
    ForkedChild child;
    UniqueFd status;
    uint32_t index;
  };
  Result<std::vector<ChildPlan>> PrepareChildren(const ForkRequest& request,
                                                 const DiskBranch& branch,
                                                 const std::vector<std::string>& child_ids,
                                                 bool start_paused);
  // Waits for each forked child's report; kills and cleans up those that
  // fail.
  std::vector<ForkedChild> CollectChildren(std::vector<Pending>& pending, const DiskBranch& branch,
                                           std::chrono::steady_clock::time_point start,
                                           std::vector<std::string>& failures);
  [[noreturn]] void RunChild(const ChildPlan& plan, const snapshot::VmState& state);

  VmProcessOptions options_;
  std::optional<RuntimeDirectory> runtime_;
  VmRecord record_;
  std::unique_ptr<EventLoop> loop_;
  UniqueFd signal_fd_;
  std::shared_ptr<ConsoleHub> console_;
  std::unique_ptr<ControlServer> control_;
  std::unique_ptr<Vm> vm_;
  std::optional<RawTerminal> raw_terminal_;
  ConsoleEscape escape_;
  bool stdin_attached_ = false;
  // Forks of this VM so far; names the parent's new disk overlays.
  uint32_t fork_generation_ = 0;
  ForkTiming last_fork_timing_;
  // Extra fields of the "ok" report of a fork child.
  std::string ready_details_;
};

}  // namespace forkvmm
