#include "vmm/control_client.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>

#include <fmt/core.h>

namespace forkvmm {

using nlohmann::json;

Result<ControlClient> ControlClient::Connect(const std::string& socket_path,
                                             std::chrono::milliseconds timeout) {
  sockaddr_un address{};
  if (socket_path.size() >= sizeof(address.sun_path)) {
    return Error(fmt::format("socket path {} is too long", socket_path));
  }
  UniqueFd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return Error::FromErrno("socket");
  address.sun_family = AF_UNIX;
  std::memcpy(address.sun_path, socket_path.c_str(), socket_path.size() + 1);
  if (connect(fd.get(), reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0) {
    return Error::FromErrno("connect", socket_path);
  }
  ControlClient client(std::move(fd), timeout);
  client.path_ = socket_path;
  ASSIGN_OR_RETURN(json greeting, client.ReadMessage());
  if (greeting.contains("error")) {
    // The server rejected the connection (too many clients) and closed it.
    return Error(fmt::format("{}: {}", socket_path,
                             greeting["error"].value("desc", std::string("connection rejected"))));
  }
  if (!greeting.contains("QMP")) {
    return Error(fmt::format("{}: unexpected greeting {}", socket_path, greeting.dump()));
  }
  TRY(client.Execute("qmp_capabilities"));
  return client;
}

Result<json> ControlClient::ReadMessage() {
  auto deadline = std::chrono::steady_clock::now() + timeout_;
  while (true) {
    size_t newline = buffer_.find('\n');
    if (newline != std::string::npos) {
      std::string line = buffer_.substr(0, newline);
      buffer_.erase(0, newline + 1);
      json message = json::parse(line, nullptr, false);
      if (message.is_discarded()) {
        return Error(fmt::format("{}: invalid reply: {}", path_, line));
      }
      return message;
    }
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return Error(fmt::format("{}: timed out waiting for a reply", path_));
    pollfd pfd{fd_.get(), POLLIN, 0};
    int ready = poll(&pfd, 1, static_cast<int>(left.count()));
    if (ready < 0 && errno != EINTR) return Error::FromErrno("poll", path_);
    if (ready <= 0) continue;
    char chunk[4096];
    ssize_t n = read(fd_.get(), chunk, sizeof(chunk));
    if (n == 0) return Error(fmt::format("{}: connection closed by the VM", path_));
    if (n < 0) {
      if (errno == EINTR) continue;
      return Error::FromErrno("read", path_);
    }
    buffer_.append(chunk, static_cast<size_t>(n));
  }
}

Result<json> ControlClient::Execute(const std::string& command, const json& arguments) {
  json request = {{"execute", command}};
  if (!arguments.empty()) request["arguments"] = arguments;
  std::string text = request.dump() + "\n";
  if (send(fd_.get(), text.data(), text.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(text.size())) {
    return Error::FromErrno("send", path_);
  }
  while (true) {
    ASSIGN_OR_RETURN(json message, ReadMessage());
    if (message.contains("event")) continue;
    if (message.contains("return")) return message["return"];
    if (message.contains("error")) {
      return Error(message["error"].value("desc", std::string("unknown error")));
    }
    return Error(fmt::format("{}: unexpected reply {}", path_, message.dump()));
  }
}

}  // namespace forkvmm
