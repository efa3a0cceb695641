#include "tests/integration/test_support.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace forkvmm::integration {

std::string ForkvmmPath() { return FORKVMM_BINARY; }

std::string GuestPath(const std::string& name) {
  return std::string(FORKVMM_TEST_GUEST_DIR) + "/" + name + ".elf";
}

std::optional<std::string> KvmUnavailableReason() {
  int fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
  if (fd < 0) return std::string(std::strerror(errno));
  close(fd);
  return std::nullopt;
}

std::string LoadedKvmModule() {
  for (const char* module : {"kvm_pvm", "kvm_intel", "kvm_amd"}) {
    if (access((std::string("/sys/module/") + module).c_str(), F_OK) == 0) return module;
  }
  return "";
}

ProcessResult RunForkvmm(const std::vector<std::string>& arguments, ProcessOptions options) {
  // Removed when the test process exits.
  static TemporaryDirectory runtime_directory;
  std::vector<std::string> argv = {ForkvmmPath(), "run", "--no-stdin"};
  argv.insert(argv.end(), arguments.begin(), arguments.end());
  options.environment.push_back("FORKVMM_RUNTIME_DIR=" + runtime_directory.path());
  return RunProcess(argv, options);
}

TemporaryDirectory::TemporaryDirectory() {
  const char* root = std::getenv("TMPDIR");
  std::string pattern = std::string(root != nullptr && *root != '\0' ? root : "/tmp") +
                        "/forkvmm-integration-XXXXXX";
  if (mkdtemp(pattern.data()) == nullptr) {
    ADD_FAILURE() << "mkdtemp " << pattern << " failed: " << std::strerror(errno);
  }
  path_ = pattern;
}

TemporaryDirectory::~TemporaryDirectory() {
  std::error_code ignored;
  std::filesystem::remove_all(path_, ignored);
}

std::string TemporaryDirectory::WriteFile(const std::string& name,
                                          const std::string& contents) const {
  std::string path = path_ + "/" + name;
  std::ofstream out(path, std::ios::binary);
  out << contents;
  if (!out) ADD_FAILURE() << "cannot write " << path;
  return path;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    ADD_FAILURE() << "cannot read " << path;
    return "";
  }
  std::ostringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

}  // namespace forkvmm::integration
