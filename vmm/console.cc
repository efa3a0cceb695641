#include "vmm/console.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>

#include <fmt/core.h>

namespace forkvmm {

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

RawTerminal& RawTerminal::operator=(RawTerminal&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) tcsetattr(fd_, TCSANOW, &saved_);
    fd_ = std::exchange(other.fd_, -1);
    saved_ = other.saved_;
  }
  return *this;
}

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

namespace forkvmm {
namespace {

// Writes all of `bytes` unless a write fails. Returns how many were written;
// on a short count errno is that of the failed write (0 if write returned 0).
size_t WriteAll(int fd, std::span<const uint8_t> bytes) {
  const uint8_t* data = bytes.data();
  size_t left = bytes.size();
  while (left > 0) {
    ssize_t n = write(fd, data, left);
    if (n < 0 && errno == EINTR) continue;
    if (n == 0) errno = 0;
    if (n <= 0) break;
    data += n;
    left -= static_cast<size_t>(n);
  }
  return bytes.size() - left;
}

}  // namespace

ConsoleHub::ConsoleHub(UniqueFd log, std::string log_path, UniqueFd extra_log,
                       std::string extra_log_path, int terminal_fd)
    : terminal_fd_(terminal_fd) {
  log_.fd = std::move(log);
  log_.path = std::move(log_path);
  extra_log_.fd = std::move(extra_log);
  extra_log_.path = std::move(extra_log_path);
}

void ConsoleHub::WriteLog(LogFile& log, std::span<const uint8_t> bytes) {
  size_t written = WriteAll(log.fd.get(), bytes);
  if (written == bytes.size()) return;
  int error = errno;
  uint64_t dropped = bytes.size() - written;
  uint64_t total = log.dropped_bytes.fetch_add(dropped, std::memory_order_relaxed) + dropped;
  LogLimited(log.error_limiter, LogLevel::kError,
             "serial log {}: write failed: {} ({} bytes of console output dropped so far)",
             log.path, error != 0 ? std::strerror(error) : "no bytes written", total);
}

std::string ConsoleHub::FormatDroppedBytes() const {
  std::string out;
  for (const LogFile* log : {&log_, &extra_log_}) {
    uint64_t dropped = log->dropped_bytes.load(std::memory_order_relaxed);
    if (dropped > 0) {
      out += fmt::format("serial log {}: {} bytes dropped after write errors\n", log->path, dropped);
    }
  }
  return out;
}

Result<std::shared_ptr<ConsoleHub>> ConsoleHub::Create(const std::string& log_path,
                                                       const std::string& extra_log_path,
                                                       int terminal_fd) {
  UniqueFd log(open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600));
  if (!log.valid()) return Error::FromErrno("open", log_path);
  UniqueFd extra_log;
  if (!extra_log_path.empty()) {
    extra_log.Reset(open(extra_log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600));
    if (!extra_log.valid()) return Error::FromErrno("open", extra_log_path);
  }
  return std::shared_ptr<ConsoleHub>(
      new ConsoleHub(std::move(log), log_path, std::move(extra_log), extra_log_path, terminal_fd));
}

ConsoleHub::~ConsoleHub() { StopListening(); }

void ConsoleHub::Write(std::span<const uint8_t> bytes) {
  WriteLog(log_, bytes);
  if (extra_log_.fd.valid()) WriteLog(extra_log_, bytes);
  if (terminal_fd_ >= 0) WriteAll(terminal_fd_, bytes);
  std::lock_guard lock(mutex_);
  for (auto& [fd, client] : clients_) {
    if (client->dead) continue;
    // A client that cannot keep up is dropped; the guest never waits.
    ssize_t n = send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n != static_cast<ssize_t>(bytes.size())) client->dead = true;
  }
}

Status ConsoleHub::Listen(const std::string& path, EventLoop& loop,
                          std::function<void(std::span<const uint8_t>)> input) {
  sockaddr_un address{};
  if (path.size() >= sizeof(address.sun_path)) {
    return Error(fmt::format("console socket path {} is too long", path));
  }
  listen_fd_.Reset(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!listen_fd_.valid()) return Error::FromErrno("socket", path);
  address.sun_family = AF_UNIX;
  std::memcpy(address.sun_path, path.c_str(), path.size() + 1);
  unlink(path.c_str());
  mode_t old_mask = umask(0177);
  int bound = bind(listen_fd_.get(), reinterpret_cast<sockaddr*>(&address), sizeof(address));
  umask(old_mask);
  if (bound != 0) return Error::FromErrno("bind", path);
  if (listen(listen_fd_.get(), 4) != 0) return Error::FromErrno("listen", path);
  loop_ = &loop;
  path_ = path;
  input_ = std::move(input);
  return loop.Add(listen_fd_.get(), EPOLLIN, [this](uint32_t) { Accept(); });
}

void ConsoleHub::StopListening() {
  std::lock_guard lock(mutex_);
  if (loop_ != nullptr) {
    for (auto& [fd, client] : clients_) loop_->Remove(fd);
    if (listen_fd_.valid()) loop_->Remove(listen_fd_.get());
  }
  clients_.clear();
  if (listen_fd_.valid()) unlink(path_.c_str());
  listen_fd_.Reset();
  loop_ = nullptr;
}

void ConsoleHub::Accept() {
  while (true) {
    UniqueFd fd(accept4(listen_fd_.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
    if (!fd.valid()) return;
    int client_fd = fd.get();
    if (!loop_->Add(client_fd, EPOLLIN | EPOLLRDHUP,
                    [this, client_fd](uint32_t) { OnClientReadable(client_fd); })
             .ok()) {
      continue;
    }
    std::lock_guard lock(mutex_);
    clients_[client_fd] = std::make_unique<Client>(Client{std::move(fd), false});
  }
}

void ConsoleHub::OnClientReadable(int fd) {
  uint8_t buffer[1024];
  ssize_t n = read(fd, buffer, sizeof(buffer));
  bool dead;
  {
    std::lock_guard lock(mutex_);
    auto it = clients_.find(fd);
    dead = it == clients_.end() || it->second->dead;
  }
  if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR) || dead) {
    DropClient(fd);
    return;
  }
  if (n > 0 && input_) input_({buffer, static_cast<size_t>(n)});
}

void ConsoleHub::DropClient(int fd) {
  loop_->Remove(fd);
  std::lock_guard lock(mutex_);
  clients_.erase(fd);
}

}  // namespace forkvmm
