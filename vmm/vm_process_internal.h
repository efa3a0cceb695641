// Small helpers shared by vm_process.cc and vm_process_fork.cc.
#pragma once

#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <string>

namespace forkvmm::internal {

// Replaces every "{id}" in `pattern` with `id`.
inline std::string ExpandId(std::string pattern, const std::string& id) {
  for (size_t at = pattern.find("{id}"); at != std::string::npos; at = pattern.find("{id}", at)) {
    pattern.replace(at, 4, id);
    at += id.size();
  }
  return pattern;
}

inline int64_t NowUnixMilliseconds() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// Writes `line` and a newline with one write(2); errors are ignored, since
// the reader notices a missing line.
inline void WriteLine(int fd, const std::string& line) {
  std::string text = line + "\n";
  ssize_t unused = write(fd, text.data(), text.size());
  (void)unused;
}

}  // namespace forkvmm::internal
