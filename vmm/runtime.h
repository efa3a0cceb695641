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
// /run/forkvmm. A root that does not exist is created with mode 0700; an
// existing one keeps its mode. The root may be a directory that also contains
// other files: forkvmm only removes entries named like its VM ids
// (kIdLength lowercase hex digits), and in them only the files above.
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
  // The start time of `pid` in clock ticks after boot (field 22 of
  // /proc/<pid>/stat), filled in by CreateVm and WriteRecord. A process
  // with the same pid and another start time is not this VM. 0 when
  // unknown (records of older versions).
  uint64_t pid_start_ticks = 0;
};

// Length of the ids RuntimeDirectory::NewId returns.
inline constexpr size_t kIdLength = 12;

// True if `id` has the form of a VM id: kIdLength lowercase hex digits.
bool IsVmId(const std::string& id);

// Checks a VM name: 1 to 64 characters from letters, digits, '.', '_' and
// '-', starting with a letter or digit, and not of the form of a VM id.
Status ValidateVmName(const std::string& name);

class RuntimeDirectory {
 public:
  // Uses `root`, or the default root when it is empty. Creates it if needed.
  static Result<RuntimeDirectory> Open(const std::string& root = "");
  static std::string DefaultRoot();

  const std::string& root() const { return root_; }
  std::string VmDirectory(const std::string& id) const { return root_ + "/" + id; }

  // Returns a new random id that no VM in this root uses.
  std::string NewId() const;
  // Creates <root>/<id> (mode 0700). Fails if `record.name` is invalid or
  // taken by a live VM.
  Status CreateVm(const VmRecord& record) const;
  // Rewrites vm.json atomically.
  Status WriteRecord(const VmRecord& record) const;
  // Removes the files forkvmm creates in the VM's directory, then the
  // directory itself if nothing else is left in it. Ignores an `id` that is
  // not of the form of a VM id.
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

// True if `pid` is a live process (not a zombie) and, when
// `start_ticks` is not 0, started at that time (see
// VmRecord::pid_start_ticks), so a reused pid does not count.
bool ProcessAlive(pid_t pid, uint64_t start_ticks = 0);

// The start time of `pid` in clock ticks after boot, or 0 if it cannot be
// read.
uint64_t ProcessStartTicks(pid_t pid);

}  // namespace forkvmm
