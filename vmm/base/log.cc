#include "vmm/base/log.h"

#include <unistd.h>

#include <string>

namespace forkvmm {
namespace {

std::atomic<LogLevel> g_level{LogLevel::kInfo};
std::mutex g_prefix_mutex;
std::string g_prefix;

const char* LevelName(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug: return "debug";
    case LogLevel::kInfo: return "info";
    case LogLevel::kWarning: return "warning";
    case LogLevel::kError: return "error";
  }
  return "?";
}

}  // namespace

void SetLogLevel(LogLevel level) { g_level.store(level); }
LogLevel GetLogLevel() { return g_level.load(); }

void SetLogPrefix(std::string_view prefix) {
  std::lock_guard lock(g_prefix_mutex);
  g_prefix = prefix;
}

void LogMessage(LogLevel level, std::string_view message) {
  std::string line;
  {
    std::lock_guard lock(g_prefix_mutex);
    line = g_prefix.empty() ? fmt::format("forkvmm[{}]", getpid()) : g_prefix;
  }
  line += fmt::format(" {}: {}\n", LevelName(level), message);
  // One write per line keeps lines from concurrent threads and processes whole.
  ssize_t unused = write(STDERR_FILENO, line.data(), line.size());
  (void)unused;
}

bool RateLimiter::Allow(uint64_t* suppressed) {
  std::lock_guard lock(mutex_);
  auto now = std::chrono::steady_clock::now();
  if (now - window_start_ >= interval_) {
    window_start_ = now;
    used_ = 0;
  }
  if (used_ >= burst_) {
    ++dropped_;
    return false;
  }
  ++used_;
  *suppressed = dropped_;
  dropped_ = 0;
  return true;
}

}  // namespace forkvmm
