#include "vmm/console.h"

#include <fcntl.h>
#include <unistd.h>

namespace forkvmm {

Result<std::shared_ptr<FdSink>> FdSink::Open(const std::string& path) {
  UniqueFd fd(open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600));
  if (!fd.valid()) return Error::FromErrno("open", path);
  return std::shared_ptr<FdSink>(new FdSink(std::move(fd)));
}

void FdSink::Write(std::span<const uint8_t> bytes) {
  const uint8_t* data = bytes.data();
  size_t left = bytes.size();
  while (left > 0) {
    ssize_t n = write(fd_, data, left);
    if (n < 0 && errno == EINTR) continue;
    // A closed or full console must not stall the vCPU: drop the output.
    if (n <= 0) return;
    data += n;
    left -= static_cast<size_t>(n);
  }
}

std::optional<RawTerminal> RawTerminal::Enter(int fd) {
  if (!isatty(fd)) return std::nullopt;
  termios saved{};
  if (tcgetattr(fd, &saved) != 0) return std::nullopt;
  termios raw = saved;
  cfmakeraw(&raw);
  // Keep output post-processing so host-side log lines stay readable.
  raw.c_oflag |= OPOST;
  if (tcsetattr(fd, TCSANOW, &raw) != 0) return std::nullopt;
  return RawTerminal(fd, saved);
}

RawTerminal::RawTerminal(RawTerminal&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)), saved_(other.saved_) {}

RawTerminal::~RawTerminal() {
  if (fd_ >= 0) tcsetattr(fd_, TCSANOW, &saved_);
}

std::string ConsoleEscape::Filter(std::span<const uint8_t> input, bool* quit) {
  std::string out;
  *quit = false;
  for (uint8_t byte : input) {
    if (escape_pending_) {
      escape_pending_ = false;
      if (byte == 'x' || byte == 'X') {
        *quit = true;
        return out;
      }
      out.push_back(static_cast<char>(kEscapeByte));
      if (byte == kEscapeByte) continue;
      out.push_back(static_cast<char>(byte));
    } else if (byte == kEscapeByte) {
      escape_pending_ = true;
    } else {
      out.push_back(static_cast<char>(byte));
    }
  }
  return out;
}

}  // namespace forkvmm
