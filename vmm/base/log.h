// Logging to stderr with levels, and a rate limiter for guest-triggered
// messages.
//
// Thread-safe: each message is written with a single write(2).
#pragma once

#include <fmt/core.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <string_view>

namespace forkvmm {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };

void SetLogLevel(LogLevel level);
LogLevel GetLogLevel();
// Sets the prefix printed before each message ("forkvmm[pid]" by default);
// fork children call it again so their lines show their own pid.
void SetLogPrefix(std::string_view prefix);
void LogMessage(LogLevel level, std::string_view message);

template <typename... Args>
void Log(LogLevel level, fmt::format_string<Args...> format, Args&&... args) {
  if (level < GetLogLevel()) return;
  LogMessage(level, fmt::format(format, std::forward<Args>(args)...));
}

#define LOG_DEBUG(...) ::forkvmm::Log(::forkvmm::LogLevel::kDebug, __VA_ARGS__)
#define LOG_INFO(...) ::forkvmm::Log(::forkvmm::LogLevel::kInfo, __VA_ARGS__)
#define LOG_WARNING(...) ::forkvmm::Log(::forkvmm::LogLevel::kWarning, __VA_ARGS__)
#define LOG_ERROR(...) ::forkvmm::Log(::forkvmm::LogLevel::kError, __VA_ARGS__)

// Limits a class of messages (one limiter per call site) to `burst` lines per
// `interval`, and reports how many were dropped when logging resumes. Used on
// every path a guest can trigger, so a guest cannot flood the host's logs.
class RateLimiter {
 public:
  RateLimiter(int burst, std::chrono::milliseconds interval) : burst_(burst), interval_(interval) {}

  // Returns true when the caller may log now. `suppressed` receives the number
  // of messages dropped since the last allowed one.
  bool Allow(uint64_t* suppressed);

 private:
  std::mutex mutex_;
  const int burst_;
  const std::chrono::milliseconds interval_;
  std::chrono::steady_clock::time_point window_start_{};
  int used_ = 0;
  uint64_t dropped_ = 0;
};

template <typename... Args>
void LogLimited(RateLimiter& limiter, LogLevel level, fmt::format_string<Args...> format,
                Args&&... args) {
  uint64_t suppressed = 0;
  if (level < GetLogLevel() || !limiter.Allow(&suppressed)) return;
  std::string message = fmt::format(format, std::forward<Args>(args)...);
  if (suppressed > 0) message += fmt::format(" ({} similar messages suppressed)", suppressed);
  LogMessage(level, message);
}

}  // namespace forkvmm
