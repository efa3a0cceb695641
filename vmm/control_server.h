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
// reply; the VM is never affected by a bad client. A client beyond
// kMaxClients gets an error in place of the greeting and is disconnected,
// and so is a client that has not sent qmp_capabilities within the
// negotiation timeout. Negotiated clients may stay idle for any time.
//
// Thread safety: runs on the event loop's thread; Broadcast may be called
// only there too (post to the loop from other threads).
#pragma once

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

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

// One argument a command accepts. The server checks the argument names and
// paths before the handler runs, and the handler checks the values.
struct ArgumentSpec {
  std::string name;
  // A string that names a file: it must be an absolute path, because the VM
  // process's working directory is not the client's.
  bool absolute_path = false;
};

// A command and every argument it accepts.
struct CommandSpec {
  std::string name;
  std::vector<ArgumentSpec> arguments;
};

class ControlServer {
 public:
  static constexpr size_t kMaxRequestBytes = 64 * 1024;
  static constexpr size_t kMaxClients = 64;
  static constexpr std::chrono::milliseconds kNegotiationTimeout = std::chrono::seconds(30);

  using Handler =
      std::function<CommandReply(const std::string& command, const nlohmann::json& arguments)>;

  // Listens on `path` (replaced if it exists, mode 0600) and serves clients
  // on `loop`. `handler` runs for the commands in `commands` whose
  // arguments pass the checks of ArgumentSpec. Any other command gets a
  // CommandNotFound error. qmp_capabilities is handled here and takes no
  // arguments.
  static Result<std::unique_ptr<ControlServer>> Listen(
      const std::string& path, EventLoop& loop, std::vector<CommandSpec> commands,
      Handler handler, std::chrono::milliseconds negotiation_timeout = kNegotiationTimeout);
  ~ControlServer();

  // Sends an event to every client that finished negotiation.
  void Broadcast(const std::string& event, const nlohmann::json& data = nlohmann::json::object());

 private:
  struct Client {
    UniqueFd fd;
    std::string buffer;
    bool negotiated = false;
    // When an unnegotiated client is disconnected.
    std::chrono::steady_clock::time_point negotiation_deadline;
  };

  ControlServer(EventLoop& loop, std::vector<CommandSpec> commands, Handler handler,
                std::chrono::milliseconds negotiation_timeout)
      : loop_(loop),
        commands_(std::move(commands)),
        handler_(std::move(handler)),
        negotiation_timeout_(negotiation_timeout) {}
  void Accept();
  void RejectClient(UniqueFd fd);
  // Returns the error message for arguments that `command` does not accept,
  // or null if they pass.
  nlohmann::json CheckArguments(const std::string& command, const nlohmann::json& arguments) const;
  // Disconnects clients past their negotiation deadline and arms the timer
  // for the next one.
  void ExpireUnnegotiated();
  void ArmNegotiationTimer();
  void OnReadable(int fd);
  // Handles every complete request in the client's buffer. Returns false if
  // the client must be dropped.
  bool ProcessBuffer(Client& client);
  void HandleRequest(Client& client, const std::string& text);
  bool Send(Client& client, const nlohmann::json& message);
  void Drop(int fd);

  EventLoop& loop_;
  std::vector<CommandSpec> commands_;
  Handler handler_;
  std::chrono::milliseconds negotiation_timeout_;
  std::string path_;
  UniqueFd listen_fd_;
  UniqueFd timer_fd_;  // a timerfd (CLOCK_MONOTONIC) for negotiation deadlines
  std::map<int, std::unique_ptr<Client>> clients_;
};

// Finds the end of the first JSON object in `text`, counting braces outside
// strings. Returns its length, 0 if the object is not complete yet, or npos
// if `text` does not start (after whitespace) with '{'. Exposed for tests.
size_t CompleteJsonObjectLength(std::string_view text);

}  // namespace forkvmm
