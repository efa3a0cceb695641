// The control socket of a VM process: JSON commands over a unix socket in
// the conventions of QEMU's QMP (docs/interop/qmp-spec.rst in QEMU):
//   server greeting  {"QMP": {"version": {...}, "capabilities": []}}
//   negotiation      {"execute": "qmp_capabilities"} -> {"return": {}}
//   command          {"execute": "stop", "arguments": {...}, "id": X}
//   success          {"return": {...}, "id": X}
//   failure          {"error": {"class": "GenericError", "desc": "..."}, "id": X}
//   event            {"event": "STOP", "data": {...}, "timestamp": {...}}
// Requests are JSON objects; newlines between them are optional. A request
// over kMaxRequestBytes, or input that is not a JSON object, gets an error
// reply; the VM is never affected by a bad client.
//
// Thread safety: runs on the event loop's thread; Broadcast may be called
// only there too (post to the loop from other threads).
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "vmm/base/event_loop.h"
#include "vmm/base/result.h"
#include "vmm/base/unique_fd.h"

namespace forkvmm {

// The outcome of one command.
struct CommandReply {
  bool ok = true;
  nlohmann::json value = nlohmann::json::object();  // the "return" value
  std::string error_class;                          // QMP error class when !ok
  std::string description;

  static CommandReply Success(nlohmann::json value = nlohmann::json::object()) {
    return {true, std::move(value), "", ""};
  }
  static CommandReply Failure(std::string description, std::string error_class = "GenericError") {
    return {false, nlohmann::json::object(), std::move(error_class), std::move(description)};
  }
};

class ControlServer {
 public:
  static constexpr size_t kMaxRequestBytes = 64 * 1024;
  static constexpr size_t kMaxClients = 64;

  using Handler =
      std::function<CommandReply(const std::string& command, const nlohmann::json& arguments)>;

  // Listens on `path` (replaced if it exists, mode 0600) and serves clients
  // on `loop`. `handler` runs for every command except qmp_capabilities.
  static Result<std::unique_ptr<ControlServer>> Listen(const std::string& path, EventLoop& loop,
                                                       Handler handler);
  ~ControlServer();

  // Sends an event to every client that finished negotiation.
  void Broadcast(const std::string& event, const nlohmann::json& data = nlohmann::json::object());

 private:
  struct Client {
    UniqueFd fd;
    std::string buffer;
    bool negotiated = false;
  };

  ControlServer(EventLoop& loop, Handler handler) : loop_(loop), handler_(std::move(handler)) {}
  void Accept();
  void OnReadable(int fd);
  // Handles every complete request in the client's buffer. Returns false if
  // the client must be dropped.
  bool ProcessBuffer(Client& client);
  void HandleRequest(Client& client, const std::string& text);
  bool Send(Client& client, const nlohmann::json& message);
  void Drop(int fd);

  EventLoop& loop_;
  Handler handler_;
  std::string path_;
  UniqueFd listen_fd_;
  std::map<int, std::unique_ptr<Client>> clients_;
};

// Finds the end of the first JSON object in `text`, counting braces outside
// strings. Returns its length, 0 if the object is not complete yet, or npos
// if `text` does not start (after whitespace) with '{'. Exposed for tests.
size_t CompleteJsonObjectLength(std::string_view text);

}  // namespace forkvmm
