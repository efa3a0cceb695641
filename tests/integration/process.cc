#include "tests/integration/process.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <utility>

#include <gtest/gtest.h>

namespace forkvmm::integration {
namespace {

using Clock = std::chrono::steady_clock;

constexpr std::chrono::milliseconds kPipeGracePeriod{2000};

#if defined(__SANITIZE_ADDRESS__)
constexpr int kBuildTimeScale = 3;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr int kBuildTimeScale = 3;
#else
constexpr int kBuildTimeScale = 1;
#endif
#else
constexpr int kBuildTimeScale = 1;
#endif

// Reads what is available from `fd` into `out` and returns false at end of
// file or on an error other than EINTR/EAGAIN.
bool Drain(int fd, std::string& out) {
  char buffer[4096];
  for (;;) {
    ssize_t n = read(fd, buffer, sizeof(buffer));
    if (n > 0) {
      out.append(buffer, static_cast<size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    return n < 0 && errno == EAGAIN;
  }
}

// The parent's environment with `overrides` ("NAME=value") applied.
std::vector<std::string> BuildEnvironment(const std::vector<std::string>& overrides) {
  std::vector<std::string> result;
  for (char** entry = environ; *entry != nullptr; ++entry) {
    std::string variable = *entry;
    std::string name = variable.substr(0, variable.find('='));
    bool overridden = false;
    for (const std::string& override_entry : overrides) {
      overridden = overridden || override_entry.substr(0, override_entry.find('=')) == name;
    }
    if (!overridden) result.push_back(variable);
  }
  result.insert(result.end(), overrides.begin(), overrides.end());
  return result;
}

std::vector<char*> PointersTo(std::vector<std::string>& strings) {
  std::vector<char*> pointers;
  for (std::string& text : strings) pointers.push_back(text.data());
  pointers.push_back(nullptr);
  return pointers;
}

// Runs in the forked child: only async-signal-safe calls.
[[noreturn]] void ExecChild(char* const* argv, char* const* envp, int stdout_fd, int stderr_fd) {
  int null_fd = open("/dev/null", O_RDONLY);
  if (null_fd < 0 || dup2(null_fd, STDIN_FILENO) < 0 || dup2(stdout_fd, STDOUT_FILENO) < 0 ||
      dup2(stderr_fd, STDERR_FILENO) < 0) {
    _exit(127);
  }
  execve(argv[0], argv, envp);
  _exit(127);
}

}  // namespace

std::chrono::milliseconds ScaledTimeout(std::chrono::milliseconds timeout) {
  static const int scale = [] {
    const char* text = std::getenv("FORKVMM_TEST_TIME_SCALE");
    if (text == nullptr || *text == '\0') return kBuildTimeScale;
    char* end = nullptr;
    long value = std::strtol(text, &end, 10);
    if (*end != '\0' || value < 1 || value > 100) {
      ADD_FAILURE() << "invalid FORKVMM_TEST_TIME_SCALE \"" << text
                    << "\": expected an integer from 1 to 100";
      return kBuildTimeScale;
    }
    return static_cast<int>(value);
  }();
  return timeout * scale;
}

std::string ProcessResult::Describe() const {
  std::ostringstream out;
  if (timed_out) {
    out << "killed after the " << elapsed.count() << " ms timeout";
  } else if (exited) {
    out << "exited with status " << exit_code << " after " << elapsed.count() << " ms";
  } else {
    out << "ended by signal " << signal << " after " << elapsed.count() << " ms";
  }
  out << "\n--- stdout ---\n" << standard_output << "\n--- stderr ---\n" << standard_error;
  return out.str();
}

ProcessResult RunProcess(const std::vector<std::string>& argv, const ProcessOptions& requested) {
  ProcessOptions options = requested;
  if (requested.scale_timeout) options.timeout = ScaledTimeout(requested.timeout);
  ProcessResult result;
  int stdout_pipe[2];
  int stderr_pipe[2];
  if (pipe2(stdout_pipe, O_CLOEXEC | O_NONBLOCK) != 0 ||
      pipe2(stderr_pipe, O_CLOEXEC | O_NONBLOCK) != 0) {
    ADD_FAILURE() << "pipe2 failed: " << std::strerror(errno);
    return result;
  }
  std::vector<std::string> arguments = argv;
  std::vector<std::string> environment = BuildEnvironment(options.environment);
  std::vector<char*> argument_pointers = PointersTo(arguments);
  std::vector<char*> environment_pointers = PointersTo(environment);
  Clock::time_point start = Clock::now();
  pid_t pid = fork();
  if (pid < 0) {
    ADD_FAILURE() << "fork failed: " << std::strerror(errno);
    return result;
  }
  if (pid == 0) {
    ExecChild(argument_pointers.data(), environment_pointers.data(), stdout_pipe[1],
              stderr_pipe[1]);
  }
  close(stdout_pipe[1]);
  close(stderr_pipe[1]);

  bool stdout_open = true;
  bool stderr_open = true;
  bool terminated = false;
  while (stdout_open || stderr_open) {
    auto elapsed = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start);
    // A process that outlives SIGKILL's effect on the pipes (a grandchild
    // holding them open) is not waited for beyond this grace period.
    if (result.timed_out && elapsed >= options.timeout + kPipeGracePeriod) break;
    if (!result.timed_out && elapsed >= options.timeout) {
      kill(pid, SIGKILL);
      result.timed_out = true;
    }
    if (!terminated && options.terminate_after && elapsed >= *options.terminate_after) {
      kill(pid, SIGTERM);
      terminated = true;
    }
    auto next_event = options.timeout;
    if (!terminated && options.terminate_after) next_event = *options.terminate_after;
    int wait_ms = static_cast<int>(std::max<int64_t>(0, (next_event - elapsed).count()));
    if (result.timed_out) wait_ms = 100;

    pollfd fds[2] = {{stdout_pipe[0], POLLIN, 0}, {stderr_pipe[0], POLLIN, 0}};
    fds[0].fd = stdout_open ? stdout_pipe[0] : -1;
    fds[1].fd = stderr_open ? stderr_pipe[0] : -1;
    if (poll(fds, 2, wait_ms) < 0 && errno != EINTR) break;
    if (stdout_open && fds[0].revents) stdout_open = Drain(stdout_pipe[0], result.standard_output);
    if (stderr_open && fds[1].revents) stderr_open = Drain(stderr_pipe[0], result.standard_error);
    if (!terminated && options.terminate_when && options.terminate_when(result.standard_output)) {
      kill(pid, SIGTERM);
      terminated = true;
    }
  }
  close(stdout_pipe[0]);
  close(stderr_pipe[0]);

  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  result.elapsed = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start);
  result.exited = WIFEXITED(status);
  result.exit_code = result.exited ? WEXITSTATUS(status) : -1;
  result.signal = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
  return result;
}

std::vector<std::string> SplitLines(const std::string& text) {
  std::vector<std::string> lines;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    lines.push_back(text.substr(start, end - start));
    start = end + 1;
  }
  return lines;
}

}  // namespace forkvmm::integration
