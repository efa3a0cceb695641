// The host side of a VM's console: where guest output goes and how host
// input reaches the guest's serial port.
#pragma once

#include <termios.h>

#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "devices/bus.h"
#include "vmm/base/result.h"
#include "vmm/base/unique_fd.h"

namespace forkvmm {

// Writes console bytes to a file descriptor (stdout or a log file).
class FdSink : public devices::ByteSink {
 public:
  // Does not take ownership of stdout-like fds; use Open() for files.
  explicit FdSink(int fd) : fd_(fd) {}
  // Opens (creates or appends to) a log file.
  static Result<std::shared_ptr<FdSink>> Open(const std::string& path);

  void Write(std::span<const uint8_t> bytes) override;

 private:
  FdSink(UniqueFd owned) : owned_(std::move(owned)), fd_(owned_.get()) {}
  UniqueFd owned_;
  int fd_;
};

// Puts a terminal in raw mode for the life of the object, so keystrokes
// (Ctrl-C included) go to the guest, and restores it afterwards.
class RawTerminal {
 public:
  static std::optional<RawTerminal> Enter(int fd);
  RawTerminal(RawTerminal&& other) noexcept;
  RawTerminal& operator=(RawTerminal&&) = delete;
  ~RawTerminal();

 private:
  RawTerminal(int fd, const termios& saved) : fd_(fd), saved_(saved) {}
  int fd_ = -1;
  termios saved_{};
};

// Splits host console input into bytes for the guest and the escape
// sequence Ctrl-A x, which asks to leave (like QEMU's -nographic). Ctrl-A
// Ctrl-A sends one Ctrl-A to the guest.
class ConsoleEscape {
 public:
  static constexpr uint8_t kEscapeByte = 0x01;  // Ctrl-A

  // Returns the bytes to forward; sets `*quit` when the sequence was typed.
  std::string Filter(std::span<const uint8_t> input, bool* quit);

 private:
  bool escape_pending_ = false;
};

}  // namespace forkvmm
