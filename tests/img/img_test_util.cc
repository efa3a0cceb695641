#include "tests/img/img_test_util.h"

#include <fcntl.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <iterator>
#include <sstream>

namespace forkvmm::block::testing {
namespace {

// AddressSanitizer reserves terabytes of address space for its shadow
// memory, so an address-space limit stops a sanitized child from starting.
#if defined(__SANITIZE_ADDRESS__)
constexpr bool kAddressSanitizer = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr bool kAddressSanitizer = true;
#else
constexpr bool kAddressSanitizer = false;
#endif
#else
constexpr bool kAddressSanitizer = false;
#endif

std::string Slurp(int fd) {
  std::string text;
  ::lseek(fd, 0, SEEK_SET);
  char buffer[4096];
  for (ssize_t n; (n = ::read(fd, buffer, sizeof(buffer))) > 0;) text.append(buffer, n);
  return text;
}

bool InPath(const std::string& name) {
  const char* path = getenv("PATH");
  std::stringstream dirs(path != nullptr ? path : "/usr/bin:/bin");
  for (std::string dir; std::getline(dirs, dir, ':');) {
    if (::access((dir + "/" + name).c_str(), X_OK) == 0) return true;
  }
  return false;
}

}  // namespace

ProcessResult RunProcess(const std::vector<std::string>& argv, const ProcessLimits& limits) {
  ProcessResult result;
  FILE* out = tmpfile();
  FILE* err = tmpfile();
  if (out == nullptr || err == nullptr) return result;
  pid_t pid = fork();
  if (pid == 0) {
    dup2(fileno(out), STDOUT_FILENO);
    dup2(fileno(err), STDERR_FILENO);
    rlimit cpu{limits.cpu_seconds, limits.cpu_seconds};
    setrlimit(RLIMIT_CPU, &cpu);
    if (limits.address_space_bytes != 0 && !kAddressSanitizer) {
      rlimit memory{limits.address_space_bytes, limits.address_space_bytes};
      setrlimit(RLIMIT_AS, &memory);
    }
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execvp(args[0], args.data());
    _exit(127);
  }
  int status = 0;
  if (pid > 0 && waitpid(pid, &status, 0) == pid) {
    if (WIFEXITED(status)) result.exit_code = WEXITSTATUS(status);
    if (WIFSIGNALED(status)) result.signal = WTERMSIG(status);
  }
  result.out = Slurp(fileno(out));
  result.err = Slurp(fileno(err));
  fclose(out);
  fclose(err);
  return result;
}

std::string ForkvmmImg() { return FORKVMM_IMG_BINARY; }

bool HaveQemu() {
  static const bool have = InPath("qemu-img") && InPath("qemu-io");
  return have;
}

std::vector<std::string> Lines(const std::string& text) {
  std::vector<std::string> lines;
  std::stringstream stream(text);
  for (std::string line; std::getline(stream, line);) lines.push_back(line);
  return lines;
}

}  // namespace forkvmm::block::testing
