#include "vmm/runtime.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
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
              {"disks", record.disks}};
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
    return record;
  } catch (const json::exception& e) {
    return Error(fmt::format("invalid VM record: {}", e.what()));
  }
}

bool ValidId(const std::string& id) {
  if (id.empty() || id.size() > 64) return false;
  for (char c : id) {
    if (!std::isalnum(static_cast<unsigned char>(c))) return false;
  }
  return true;
}

}  // namespace

bool ProcessAlive(pid_t pid) {
  if (pid <= 0) return false;
  if (kill(pid, 0) != 0 && errno == ESRCH) return false;
  // A zombie still answers kill(0); /proc tells it apart.
  std::ifstream stat(fmt::format("/proc/{}/stat", pid));
  std::string line;
  if (!std::getline(stat, line)) return false;
  size_t close = line.rfind(')');
  return close == std::string::npos || close + 2 >= line.size() || line[close + 2] != 'Z';
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
  std::filesystem::create_directories(path, error);
  if (error) {
    return Error(fmt::format("cannot create runtime directory {}: {}", path, error.message()));
  }
  chmod(path.c_str(), 0700);
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
  if (!record.name.empty()) {
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
  {
    std::ofstream out(temporary, std::ios::trunc);
    out << ToJson(record).dump(2) << '\n';
    if (!out) return Error(fmt::format("cannot write {}", temporary));
  }
  if (rename(temporary.c_str(), (directory + "/vm.json").c_str()) != 0) {
    return Error::FromErrno("rename", temporary);
  }
  return Ok();
}

void RuntimeDirectory::RemoveVm(const std::string& id) const {
  if (!ValidId(id)) return;
  std::error_code ignored;
  std::filesystem::remove_all(VmDirectory(id), ignored);
}

void RuntimeDirectory::RemoveFailedVm(const std::string& id) const {
  if (!ValidId(id)) return;
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
    if (!entry.is_directory() || !ValidId(id)) continue;
    auto record = ReadRecord(id);
    if (!record.ok()) {
      // A directory without a record is a VM still starting up, or debris.
      // Only debris older than a minute is removed.
      struct stat st {};
      if (stat(entry.path().c_str(), &st) == 0 && time(nullptr) - st.st_mtime > 60) RemoveVm(id);
      continue;
    }
    if (!ProcessAlive(record->pid)) {
      LOG_DEBUG("removing stale runtime entry of VM {} (pid {} is gone)", id, record->pid);
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
  if (ValidId(id_or_name) && access(FailedLogPath(id_or_name).c_str(), F_OK) == 0) {
    return Error(fmt::format("no VM with id or name '{}' in {}: it ended with an error, see {}",
                             id_or_name, root_, FailedLogPath(id_or_name)));
  }
  return Error(fmt::format("no VM with id or name '{}' in {}", id_or_name, root_));
}

}  // namespace forkvmm
