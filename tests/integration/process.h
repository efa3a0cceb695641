// Runs a child process with its output captured and a deadline enforced.
#pragma once

#include <chrono>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace forkvmm::integration {

struct ProcessOptions {
  // The child is killed with SIGKILL when this much time, scaled by
  // ScaledTimeout unless scale_timeout is false, has passed.
  std::chrono::milliseconds timeout{10000};
  bool scale_timeout = true;
  // If set, the child receives SIGTERM after this much time.
  std::optional<std::chrono::milliseconds> terminate_after;
  // If set, the child receives SIGTERM as soon as this returns true for the
  // standard output captured so far. It is called after each read.
  std::function<bool(const std::string& standard_output)> terminate_when;
  // "NAME=value" entries added to (or replacing those in) the environment.
  std::vector<std::string> environment;
};

struct ProcessResult {
  bool exited = false;  // true if the child called exit(), false if a signal ended it
  int exit_code = -1;   // valid when exited
  int signal = 0;       // valid when !exited
  bool timed_out = false;
  std::string standard_output;
  std::string standard_error;
  std::chrono::milliseconds elapsed{0};

  // A summary for test failure messages: how the child ended, and its output.
  std::string Describe() const;
};

// Returns `timeout` multiplied by the test time scale: 3 in builds with
// AddressSanitizer, which run forkvmm several times slower, else 1, or the
// value of FORKVMM_TEST_TIME_SCALE (a positive integer) when it is set.
std::chrono::milliseconds ScaledTimeout(std::chrono::milliseconds timeout);

// Runs argv[0] (a path, not searched in PATH) with stdin from /dev/null.
// The timeout is scaled by ScaledTimeout, but terminate_after is not.
// Fails the calling test through ADD_FAILURE if the process cannot start.
ProcessResult RunProcess(const std::vector<std::string>& argv, const ProcessOptions& options);

// Splits text into lines without their '\n'; a final line without '\n' counts.
std::vector<std::string> SplitLines(const std::string& text);

}  // namespace forkvmm::integration
