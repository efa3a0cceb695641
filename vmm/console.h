// The host side of a VM's console: where guest output goes and how host
// input reaches the guest's serial port.
#pragma once

#include <termios.h>

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "devices/bus.h"
#include "vmm/base/log.h"
#include "vmm/base/event_loop.h"
#include "vmm/base/result.h"
#include "vmm/base/unique_fd.h"

namespace forkvmm {

// Puts a terminal in raw mode for the life of the object, so keystrokes
// (Ctrl-C included) go to the guest, and restores it afterwards.
class RawTerminal {
 public:
  static std::optional<RawTerminal> Enter(int fd);
  RawTerminal(RawTerminal&& other) noexcept;
  RawTerminal& operator=(RawTerminal&& other) noexcept;
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

// Fans guest console output out to the VM's serial log, optionally a
// terminal, and every client attached through the console socket; passes
// client input to the guest. A log write that fails never stops the guest:
// the bytes are dropped and counted, and the error is logged (rate-limited).
//
// Thread safety: Write() may be called from any thread (vCPU threads);
// everything else runs on the event loop's thread.
class ConsoleHub : public devices::ByteSink {
 public:
  // `log_path`: the serial log (appended). `extra_log_path`: a second log
  // the user asked for, which outlives the runtime directory ("" for none).
  // `terminal_fd`: also copy output there (-1 for none); not owned.
  static Result<std::shared_ptr<ConsoleHub>> Create(const std::string& log_path,
                                                    const std::string& extra_log_path,
                                                    int terminal_fd);
  ~ConsoleHub() override;

  void Write(std::span<const uint8_t> bytes) override;

  // Returns one line per log file that lost output to write errors,
  // "serial log PATH: N bytes dropped after write errors", or "".
  std::string FormatDroppedBytes() const;

  // Accepts console clients on the unix socket `path` (mode 0600). Bytes a
  // client sends go to `input`.
  Status Listen(const std::string& path, EventLoop& loop,
                std::function<void(std::span<const uint8_t>)> input);
  // Stops listening and drops clients, as a fork child does with the
  // sockets it inherited.
  void StopListening();

 private:
  struct Client {
    UniqueFd fd;
    bool dead = false;
  };
  // A file the console output is appended to.
  struct LogFile {
    UniqueFd fd;
    std::string path;
    std::atomic<uint64_t> dropped_bytes{0};
    // The first write error is logged, later ones at most once a minute,
    // because a full disk fails every write the guest makes.
    RateLimiter error_limiter{1, std::chrono::minutes(1)};
  };
  ConsoleHub(UniqueFd log, std::string log_path, UniqueFd extra_log, std::string extra_log_path,
             int terminal_fd);
  static void WriteLog(LogFile& log, std::span<const uint8_t> bytes);
  void Accept();
  void OnClientReadable(int fd);
  void DropClient(int fd);

  LogFile log_;
  LogFile extra_log_;  // fd not valid when there is none
  int terminal_fd_;
  EventLoop* loop_ = nullptr;
  std::string path_;
  UniqueFd listen_fd_;
  std::function<void(std::span<const uint8_t>)> input_;
  std::mutex mutex_;  // guards clients_
  std::map<int, std::unique_ptr<Client>> clients_;
};

}  // namespace forkvmm
