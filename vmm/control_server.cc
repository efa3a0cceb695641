#include "vmm/control_server.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <optional>

#include <fmt/core.h>

#include "vmm/base/log.h"

namespace forkvmm {
namespace {

using nlohmann::json;

RateLimiter g_client_error_limiter(5, std::chrono::seconds(10));

json Timestamp() {
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return json{{"seconds", ts.tv_sec}, {"microseconds", ts.tv_nsec / 1000}};
}

json ErrorMessage(const std::string& error_class, const std::string& description) {
  return json{{"error", {{"class", error_class}, {"desc", description}}}};
}

// Sends one message without blocking. Returns false if it could not be sent
// whole.
bool SendMessage(int fd, const json& message) {
  std::string text = message.dump() + "\r\n";
  size_t sent = 0;
  while (sent < text.size()) {
    ssize_t n = send(fd, text.data() + sent, text.size() - sent, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0 && errno == EINTR) continue;
    // A client that does not read its replies loses its connection rather
    // than stall the VM's control loop.
    if (n <= 0) return false;
    sent += static_cast<size_t>(n);
  }
  return true;
}

std::string JoinNames(const std::vector<ArgumentSpec>& arguments) {
  std::string names;
  for (size_t i = 0; i < arguments.size(); ++i) {
    if (i > 0) names += i + 1 == arguments.size() ? " and " : ", ";
    names += arguments[i].name;
  }
  return names;
}

}  // namespace

size_t CompleteJsonObjectLength(std::string_view text) {
  size_t i = 0;
  while (i < text.size() && std::isspace(static_cast<unsigned char>(text[i]))) ++i;
  if (i == text.size()) return 0;
  if (text[i] != '{') return std::string_view::npos;
  int depth = 0;
  bool in_string = false;
  bool escaped = false;
  for (; i < text.size(); ++i) {
    char c = text[i];
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '{' || c == '[') {
      ++depth;
    } else if (c == '}' || c == ']') {
      if (--depth == 0) return i + 1;
    }
  }
  return 0;
}

Result<std::unique_ptr<ControlServer>> ControlServer::Listen(
    const std::string& path, EventLoop& loop, std::vector<CommandSpec> commands, Handler handler,
    std::chrono::milliseconds negotiation_timeout) {
  sockaddr_un address{};
  if (path.size() >= sizeof(address.sun_path)) {
    return Error(fmt::format("control socket path {} is too long for a unix socket", path));
  }
  std::unique_ptr<ControlServer> server(
      new ControlServer(loop, std::move(commands), std::move(handler), negotiation_timeout));
  server->path_ = path;
  server->listen_fd_.Reset(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!server->listen_fd_.valid()) return Error::FromErrno("socket", path);
  address.sun_family = AF_UNIX;
  std::memcpy(address.sun_path, path.c_str(), path.size() + 1);
  unlink(path.c_str());
  // Created with mode 0600 from the start: no window where others may connect.
  mode_t old_mask = umask(0177);
  int bound = bind(server->listen_fd_.get(), reinterpret_cast<sockaddr*>(&address),
                   sizeof(address));
  umask(old_mask);
  if (bound != 0) return Error::FromErrno("bind", path);
  if (listen(server->listen_fd_.get(), 16) != 0) return Error::FromErrno("listen", path);
  server->timer_fd_.Reset(timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK));
  if (!server->timer_fd_.valid()) return Error::FromErrno("timerfd_create", path);
  ControlServer* raw = server.get();
  TRY(loop.Add(server->timer_fd_.get(), EPOLLIN, [raw](uint32_t) { raw->ExpireUnnegotiated(); }));
  TRY(loop.Add(server->listen_fd_.get(), EPOLLIN, [raw](uint32_t) { raw->Accept(); }));
  return server;
}

ControlServer::~ControlServer() {
  for (auto& [fd, client] : clients_) loop_.Remove(fd);
  if (timer_fd_.valid()) loop_.Remove(timer_fd_.get());
  if (listen_fd_.valid()) {
    loop_.Remove(listen_fd_.get());
    unlink(path_.c_str());
  }
}

void ControlServer::Accept() {
  while (true) {
    UniqueFd fd(accept4(listen_fd_.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
    if (!fd.valid()) return;
    if (clients_.size() >= kMaxClients) {
      RejectClient(std::move(fd));
      continue;
    }
    auto client = std::make_unique<Client>();
    client->fd = std::move(fd);
    client->negotiation_deadline = std::chrono::steady_clock::now() + negotiation_timeout_;
    int client_fd = client->fd.get();
    json greeting = {{"QMP",
                      {{"version",
                        {{"qemu", {{"major", 0}, {"minor", 1}, {"micro", 0}}},
                         {"package", "forkvmm 0.1.0"}}},
                       {"capabilities", json::array()}}}};
    if (!Send(*client, greeting)) continue;
    Status added = loop_.Add(client_fd, EPOLLIN | EPOLLRDHUP,
                             [this, client_fd](uint32_t) { OnReadable(client_fd); });
    if (!added.ok()) continue;
    clients_[client_fd] = std::move(client);
    ArmNegotiationTimer();
  }
}

void ControlServer::RejectClient(UniqueFd fd) {
  LogLimited(g_client_error_limiter, LogLevel::kWarning,
             "control socket {}: rejected a client, {} are connected", path_, clients_.size());
  // Sent in place of the greeting, so the client can report why it was
  // disconnected. The socket is new, so its send buffer has room.
  SendMessage(fd.get(),
              ErrorMessage("GenericError",
                           fmt::format("too many connections: the VM serves at most {} control "
                                       "clients, try again later",
                                       kMaxClients)));
}

void ControlServer::ExpireUnnegotiated() {
  uint64_t expirations = 0;
  ssize_t unused = read(timer_fd_.get(), &expirations, sizeof(expirations));
  (void)unused;
  auto now = std::chrono::steady_clock::now();
  std::vector<int> expired;
  for (auto& [fd, client] : clients_) {
    if (!client->negotiated && client->negotiation_deadline <= now) expired.push_back(fd);
  }
  json message = ErrorMessage(
      "GenericError",
      fmt::format("timed out after {} ms waiting for qmp_capabilities", negotiation_timeout_.count()));
  for (int fd : expired) {
    SendMessage(fd, message);
    Drop(fd);
  }
  ArmNegotiationTimer();
}

void ControlServer::ArmNegotiationTimer() {
  std::optional<std::chrono::steady_clock::time_point> next;
  for (auto& [fd, client] : clients_) {
    if (client->negotiated) continue;
    if (!next || client->negotiation_deadline < *next) next = client->negotiation_deadline;
  }
  itimerspec spec{};  // all zero: disarmed
  if (next) {
    auto left = std::chrono::duration_cast<std::chrono::nanoseconds>(
        *next - std::chrono::steady_clock::now());
    // A zero it_value would disarm the timer, so a past deadline fires in 1 ns.
    int64_t nanoseconds = std::max<int64_t>(left.count(), 1);
    spec.it_value.tv_sec = static_cast<time_t>(nanoseconds / 1000000000);
    spec.it_value.tv_nsec = static_cast<long>(nanoseconds % 1000000000);
  }
  timerfd_settime(timer_fd_.get(), 0, &spec, nullptr);
}

void ControlServer::OnReadable(int fd) {
  auto it = clients_.find(fd);
  if (it == clients_.end()) return;
  Client& client = *it->second;
  char chunk[4096];
  ssize_t n = read(fd, chunk, sizeof(chunk));
  if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
    Drop(fd);
    return;
  }
  if (n < 0) return;
  client.buffer.append(chunk, static_cast<size_t>(n));
  if (!ProcessBuffer(client)) Drop(fd);
}

bool ControlServer::ProcessBuffer(Client& client) {
  while (true) {
    size_t length = CompleteJsonObjectLength(client.buffer);
    if (length == std::string_view::npos) {
      // Not an object: answer once and skip to the next line.
      size_t newline = client.buffer.find('\n');
      if (!Send(client, ErrorMessage("GenericError", "JSON parse error: expected an object"))) {
        return false;
      }
      client.buffer.erase(0, newline == std::string::npos ? client.buffer.size() : newline + 1);
      continue;
    }
    if (length == 0) {
      if (client.buffer.size() > kMaxRequestBytes) {
        Send(client, ErrorMessage("GenericError",
                                  fmt::format("request exceeds {} bytes", kMaxRequestBytes)));
        return false;  // no way to find the next request boundary
      }
      // Keep only what an incomplete request needs; drop leading blanks.
      if (client.buffer.find_first_not_of(" \t\r\n") == std::string::npos) client.buffer.clear();
      return true;
    }
    if (length > kMaxRequestBytes) {
      Send(client, ErrorMessage("GenericError",
                                fmt::format("request exceeds {} bytes", kMaxRequestBytes)));
      client.buffer.erase(0, length);
      continue;
    }
    std::string text = client.buffer.substr(0, length);
    client.buffer.erase(0, length);
    HandleRequest(client, text);
  }
}

void ControlServer::HandleRequest(Client& client, const std::string& text) {
  json request = json::parse(text, nullptr, false);
  if (request.is_discarded() || !request.is_object()) {
    Send(client, ErrorMessage("GenericError", "JSON parse error"));
    return;
  }
  json id = request.contains("id") ? request["id"] : json();
  auto reply_with = [&](json message) {
    if (!id.is_null()) message["id"] = id;
    Send(client, message);
  };
  if (!request.contains("execute") || !request["execute"].is_string()) {
    reply_with(ErrorMessage("GenericError", "request has no 'execute' string"));
    return;
  }
  std::string command = request["execute"].get<std::string>();
  json arguments = request.value("arguments", json::object());
  if (!arguments.is_object()) {
    reply_with(ErrorMessage("GenericError", "'arguments' must be an object"));
    return;
  }
  if (command == "qmp_capabilities") {
    if (!arguments.empty()) {
      reply_with(ErrorMessage("GenericError",
                              fmt::format("unexpected argument '{}' for qmp_capabilities, which "
                                          "takes no arguments",
                                          arguments.begin().key())));
      return;
    }
    client.negotiated = true;
    reply_with(json{{"return", json::object()}});
    return;
  }
  if (!client.negotiated) {
    reply_with(ErrorMessage("CommandNotFound",
                            "expecting capabilities negotiation with 'qmp_capabilities'"));
    return;
  }
  if (json error = CheckArguments(command, arguments); !error.is_null()) {
    reply_with(std::move(error));
    return;
  }
  CommandReply reply = handler_(command, arguments);
  reply_with(reply.ok ? json{{"return", reply.value}}
                      : ErrorMessage(reply.error_class, reply.description));
}

json ControlServer::CheckArguments(const std::string& command, const json& arguments) const {
  auto spec = std::find_if(commands_.begin(), commands_.end(),
                           [&](const CommandSpec& candidate) { return candidate.name == command; });
  if (spec == commands_.end()) {
    return ErrorMessage("CommandNotFound", fmt::format("the command {} has not been found", command));
  }
  for (const auto& item : arguments.items()) {
    const std::string& name = item.key();
    const json& value = item.value();
    auto argument =
        std::find_if(spec->arguments.begin(), spec->arguments.end(),
                     [&](const ArgumentSpec& candidate) { return candidate.name == name; });
    if (argument == spec->arguments.end()) {
      std::string accepted = spec->arguments.empty()
                                 ? "which takes no arguments"
                                 : "which takes " + JoinNames(spec->arguments);
      return ErrorMessage("GenericError", fmt::format("unexpected argument '{}' for {}, {}", name,
                                                      command, accepted));
    }
    // A value of the wrong type is left to the handler, which names the
    // type it expects.
    if (argument->absolute_path && value.is_string() &&
        !value.get<std::string>().starts_with('/')) {
      return ErrorMessage("GenericError",
                          fmt::format("invalid {} argument {} {}: expected an absolute path",
                                      command, name, value.dump()));
    }
  }
  return json();
}

bool ControlServer::Send(Client& client, const nlohmann::json& message) {
  return SendMessage(client.fd.get(), message);
}

void ControlServer::Broadcast(const std::string& event, const nlohmann::json& data) {
  json message = {{"event", event}, {"data", data}, {"timestamp", Timestamp()}};
  std::vector<int> failed;
  for (auto& [fd, client] : clients_) {
    if (client->negotiated && !Send(*client, message)) failed.push_back(fd);
  }
  for (int fd : failed) Drop(fd);
}

void ControlServer::Drop(int fd) {
  loop_.Remove(fd);
  clients_.erase(fd);
}

}  // namespace forkvmm
