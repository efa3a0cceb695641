// Runs a child process with its output captured and a deadline enforced.
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <vector>

namespace forkvmm::integration {

struct ProcessOptions {
  // The child is killed with SIGKILL when this much time has passed.
  std::chrono::milliseconds timeout{10000};
  // If set, the child receives SIGTERM after this much time.
  std::optional<std::chrono::milliseconds> terminate_after;
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

// Runs argv[0] (a path, not searched in PATH) with stdin from /dev/null.
// Fails the calling test through ADD_FAILURE if the process cannot start.
ProcessResult RunProcess(const std::vector<std::string>& argv, const ProcessOptions& options);

// Splits text into lines without their '\n'; a final line without '\n' counts.
std::vector<std::string> SplitLines(const std::string& text);

}  // namespace forkvmm::integration
