#include "vmm/runtime.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include <fmt/core.h>

#include "vmm/base/log.h"

namespace forkvmm {
namespace {

using nlohmann::json;

json ToJson(const VmRecord& record) {
  return json{{"id", record.id},
              {"name", record.name},
              {"parent_id", record.parent_id},
              {"pid", record.pid},
              {"ram_bytes", record.ram_bytes},
              {"vcpu_count", record.vcpu_count},
              {"created_unix_ms", record.created_unix_ms},
              {"disks", record.disks},
              {"pid_start_ticks", record.pid_start_ticks}};
}

Result<VmRecord> FromJson(const json& value) {
  try {
    VmRecord record;
    record.id = value.at("id").get<std::string>();
    record.name = value.value("name", "");
    record.parent_id = value.value("parent_id", "");
    record.pid = value.at("pid").get<pid_t>();
    record.ram_bytes = value.value("ram_bytes", uint64_t{0});
    record.vcpu_count = value.value("vcpu_count", 0u);
    record.created_unix_ms = value.value("created_unix_ms", int64_t{0});
    record.disks = value.value("disks", std::vector<std::string>{});
    record.pid_start_ticks = value.value("pid_start_ticks", uint64_t{0});
    return record;
  } catch (const json::exception& e) {
    return Error(fmt::format("invalid VM record: {}", e.what()));
  }
}

// The files a VM process creates in its directory; RemoveVm removes only
// these.
constexpr const char* kVmFiles[] = {"vm.json",      "vm.json.tmp", "control.sock",
                                    "console.sock", "serial.log",  "vmm.log"};

constexpr size_t kMaxNameLength = 64;

}  // namespace

bool IsVmId(const std::string& id) {
  if (id.size() != kIdLength) return false;
  return std::all_of(id.begin(), id.end(),
                     [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

Status ValidateVmName(const std::string& name) {
  if (name.empty() || name.size() > kMaxNameLength) {
    return Error(
        fmt::format("invalid VM name '{}': expected 1 to {} characters", name, kMaxNameLength));
  }
  auto allowed = [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-';
  };
  if (!std::isalnum(static_cast<unsigned char>(name[0])) ||
      !std::all_of(name.begin(), name.end(), allowed)) {
    return Error(fmt::format(
        "invalid VM name '{}': use letters, digits, '.', '_' and '-', starting with a letter or "
        "digit",
        name));
  }
  if (IsVmId(name)) {
    return Error(fmt::format("invalid VM name '{}': {} hex digits would read as a VM id", name,
                             kIdLength));
  }
  return Ok();
}

namespace {

// Reads the state (field 3) and start time (field 22) of `pid` from
// /proc/<pid>/stat. False if the file cannot be read or parsed.
bool ReadProcessStat(pid_t pid, char& state, uint64_t& start_ticks) {
  std::ifstream stat(fmt::format("/proc/{}/stat", pid));
  std::string line;
  if (!std::getline(stat, line)) return false;
  // The command name in field 2 may contain spaces and ')', so the fields
  // are counted from the last ')': field 3 (state) is the first after it.
  size_t close = line.rfind(')');
  if (close == std::string::npos) return false;
  std::istringstream fields(line.substr(close + 1));
  std::string field;
  for (int number = 3; number <= 22; ++number) {
    if (!(fields >> field)) return false;
    if (number == 3) state = field[0];
  }
  char* end = nullptr;
  start_ticks = std::strtoull(field.c_str(), &end, 10);
  return *end == '\0';
}

}  // namespace

uint64_t ProcessStartTicks(pid_t pid) {
  char state = 0;
  uint64_t start_ticks = 0;
  return ReadProcessStat(pid, state, start_ticks) ? start_ticks : 0;
}

bool ProcessAlive(pid_t pid, uint64_t start_ticks) {
  if (pid <= 0) return false;
  if (kill(pid, 0) != 0 && errno == ESRCH) return false;
  // A zombie still answers kill(0); /proc tells it apart.
  char state = 0;
  uint64_t actual_ticks = 0;
  if (!ReadProcessStat(pid, state, actual_ticks)) return false;
  if (state == 'Z') return false;
  return start_ticks == 0 || actual_ticks == start_ticks;
}

std::string RuntimeDirectory::DefaultRoot() {
  if (const char* root = std::getenv("FORKVMM_RUNTIME_DIR"); root != nullptr && *root != '\0') {
    return root;
  }
  if (const char* xdg = std::getenv("XDG_RUNTIME_DIR"); xdg != nullptr && *xdg != '\0') {
    return std::string(xdg) + "/forkvmm";
  }
  return "/run/forkvmm";
}

Result<RuntimeDirectory> RuntimeDirectory::Open(const std::string& root) {
  std::string path = root.empty() ? DefaultRoot() : root;
  std::error_code error;
  bool created = std::filesystem::create_directories(path, error);
  if (error) {
    return Error(fmt::format("cannot create runtime directory {}: {}", path, error.message()));
  }
  // Only a directory forkvmm created is made private: an existing one may
  // be shared with other files and keeps the mode its owner gave it.
  if (created && chmod(path.c_str(), 0700) != 0) {
    return Error::FromErrno("chmod", path);
  }
  if (access(path.c_str(), W_OK | X_OK) != 0) {
    return Error::FromErrno("runtime directory", path + " is not writable");
  }
  return RuntimeDirectory(path);
}

std::string RuntimeDirectory::NewId() const {
  while (true) {
    uint8_t bytes[6];
    if (getrandom(bytes, sizeof(bytes), 0) != sizeof(bytes)) {
      // getrandom does not fail for 6 bytes once the pool is initialized;
      // fall back to the pid and time rather than loop forever.
      uint64_t fallback = static_cast<uint64_t>(getpid()) ^ static_cast<uint64_t>(time(nullptr));
      std::memcpy(bytes, &fallback, sizeof(bytes));
    }
    std::string id;
    for (uint8_t byte : bytes) id += fmt::format("{:02x}", byte);
    if (access(VmDirectory(id).c_str(), F_OK) != 0) return id;
  }
}

Status RuntimeDirectory::CreateVm(const VmRecord& record) const {
  if (!IsVmId(record.id)) return Error(fmt::format("invalid VM id '{}'", record.id));
  if (!record.name.empty()) {
    TRY(ValidateVmName(record.name));
    for (const VmRecord& other : List()) {
      if (other.name == record.name) {
        return Error(fmt::format("a VM named '{}' already exists (id {})", record.name, other.id));
      }
    }
  }
  std::string directory = VmDirectory(record.id);
  if (mkdir(directory.c_str(), 0700) != 0) return Error::FromErrno("mkdir", directory);
  return WriteRecord(record);
}

Status RuntimeDirectory::WriteRecord(const VmRecord& record) const {
  std::string directory = VmDirectory(record.id);
  std::string temporary = directory + "/vm.json.tmp";
  VmRecord stored = record;
  stored.pid_start_ticks = ProcessStartTicks(record.pid);
  {
    std::ofstream out(temporary, std::ios::trunc);
    out << ToJson(stored).dump(2) << '\n';
    if (!out) return Error(fmt::format("cannot write {}", temporary));
  }
  if (rename(temporary.c_str(), (directory + "/vm.json").c_str()) != 0) {
    return Error::FromErrno("rename", temporary);
  }
  return Ok();
}

void RuntimeDirectory::RemoveVm(const std::string& id) const {
  if (!IsVmId(id)) return;
  std::string directory = VmDirectory(id);
  for (const char* file : kVmFiles) unlink((directory + "/" + file).c_str());
  if (rmdir(directory.c_str()) != 0 && errno != ENOENT) {
    LOG_WARNING("runtime entry {} was not removed: {} (forkvmm removes only its own files)",
                directory, std::strerror(errno));
  }
}

void RuntimeDirectory::RemoveFailedVm(const std::string& id) const {
  if (!IsVmId(id)) return;
  std::error_code ignored;
  std::filesystem::rename(VmDirectory(id) + "/vmm.log", FailedLogPath(id), ignored);
  RemoveVm(id);
}

Result<VmRecord> RuntimeDirectory::ReadRecord(const std::string& id) const {
  std::string path = VmDirectory(id) + "/vm.json";
  std::ifstream in(path);
  if (!in) return Error::FromErrno("open", path);
  json value = json::parse(in, nullptr, false);
  if (value.is_discarded()) return Error(fmt::format("{}: invalid JSON", path));
  return FromJson(value);
}

std::vector<VmRecord> RuntimeDirectory::List() const {
  std::vector<VmRecord> records;
  std::error_code error;
  for (const auto& entry : std::filesystem::directory_iterator(root_, error)) {
    std::string id = entry.path().filename();
    if (!entry.is_directory() || !IsVmId(id)) continue;
    auto record = ReadRecord(id);
    if (!record.ok()) {
      // A directory without a record is a VM still starting up, or debris.
      // Only debris older than a minute is removed.
      struct stat st {};
      if (stat(entry.path().c_str(), &st) == 0 && time(nullptr) - st.st_mtime > 60) RemoveVm(id);
      continue;
    }
    if (!ProcessAlive(record->pid, record->pid_start_ticks)) {
      LOG_DEBUG("removing stale runtime entry of VM {} (pid {} is gone or reused)", id,
                record->pid);
      RemoveVm(id);
      continue;
    }
    records.push_back(std::move(record).value());
  }
  std::sort(records.begin(), records.end(), [](const VmRecord& a, const VmRecord& b) {
    return a.created_unix_ms < b.created_unix_ms;
  });
  return records;
}

Result<VmRecord> RuntimeDirectory::Find(const std::string& id_or_name) const {
  if (id_or_name.empty()) return Error("no VM id given");
  std::vector<VmRecord> matches;
  for (VmRecord& record : List()) {
    if (record.id == id_or_name || record.name == id_or_name) return record;
    if (record.id.starts_with(id_or_name)) matches.push_back(record);
  }
  if (matches.size() == 1) return matches.front();
  if (matches.size() > 1) {
    return Error(fmt::format("VM id prefix '{}' is ambiguous ({} VMs match)", id_or_name,
                             matches.size()));
  }
  if (IsVmId(id_or_name) && access(FailedLogPath(id_or_name).c_str(), F_OK) == 0) {
    return Error(fmt::format("no VM with id or name '{}' in {}: it ended with an error, see {}",
                             id_or_name, root_, FailedLogPath(id_or_name)));
  }
  return Error(fmt::format("no VM with id or name '{}' in {}", id_or_name, root_));
}

}  // namespace forkvmm
