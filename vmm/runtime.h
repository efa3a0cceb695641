// The runtime directory where each VM process registers itself, so the CLI
// can find, list and control VMs by id or name.
//
// Layout: <root>/<id>/ contains
//   vm.json       the VmRecord (written atomically by the VM process)
//   control.sock  the QMP-style control socket (mode 0600)
//   console.sock  the serial console socket for `forkvmm console`
//   serial.log    everything the guest wrote to its console
//   vmm.log       the VMM's own log of a background VM
// and <root>/<id>.failed.log is the vmm.log of a VM that ended with an
// error, kept after its directory is removed.
// The root is $FORKVMM_RUNTIME_DIR, else $XDG_RUNTIME_DIR/forkvmm, else
// /run/forkvmm; it is created with mode 0700.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include "vmm/base/result.h"

namespace forkvmm {

struct VmRecord {
  std::string id;
  std::string name;
  std::string parent_id;  // empty for a VM that was booted, not forked
  pid_t pid = 0;
  uint64_t ram_bytes = 0;
  uint32_t vcpu_count = 0;
  int64_t created_unix_ms = 0;
  std::vector<std::string> disks;  // the VM's writable top layers
};

class RuntimeDirectory {
 public:
  // Uses `root`, or the default root when it is empty. Creates it if needed.
  static Result<RuntimeDirectory> Open(const std::string& root = "");
  static std::string DefaultRoot();

  const std::string& root() const { return root_; }
  std::string VmDirectory(const std::string& id) const { return root_ + "/" + id; }

  // Returns a new random id that no VM in this root uses.
  std::string NewId() const;
  // Creates <root>/<id> (mode 0700). Fails if `record.name` is taken by a
  // live VM.
  Status CreateVm(const VmRecord& record) const;
  // Rewrites vm.json atomically.
  Status WriteRecord(const VmRecord& record) const;
  // Removes the VM's directory and everything in it.
  void RemoveVm(const std::string& id) const;
  // Removes the VM's directory but first moves its vmm.log, if any, to
  // FailedLogPath(id). Open descriptors of the log keep writing to it.
  void RemoveFailedVm(const std::string& id) const;
  std::string FailedLogPath(const std::string& id) const { return root_ + "/" + id + ".failed.log"; }

  // Lists live VMs. Entries whose process is gone are removed.
  std::vector<VmRecord> List() const;
  // Finds a live VM by id, unique id prefix, or name.
  Result<VmRecord> Find(const std::string& id_or_name) const;

 private:
  explicit RuntimeDirectory(std::string root) : root_(std::move(root)) {}
  Result<VmRecord> ReadRecord(const std::string& id) const;
  std::string root_;
};

// True if `pid` is a live process (not a zombie).
bool ProcessAlive(pid_t pid);

}  // namespace forkvmm
