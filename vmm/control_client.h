// A client for a VM process's control socket (see control_server.h): used
// by the CLI and the tests.
#pragma once

#include <chrono>
#include <nlohmann/json.hpp>
#include <string>

#include "vmm/base/result.h"
#include "vmm/base/unique_fd.h"

namespace forkvmm {

class ControlClient {
 public:
  // Connects to `socket_path`, reads the greeting and negotiates
  // capabilities. `timeout` bounds every later read. An error the server
  // sends in place of the greeting becomes the returned Error.
  static Result<ControlClient> Connect(const std::string& socket_path,
                                       std::chrono::milliseconds timeout = std::chrono::seconds(30));

  // Sends a command and returns its "return" value; a QMP error becomes an
  // Error carrying its description. Events that arrive first are skipped.
  Result<nlohmann::json> Execute(const std::string& command,
                                 const nlohmann::json& arguments = nlohmann::json::object());

 private:
  ControlClient(UniqueFd fd, std::chrono::milliseconds timeout)
      : fd_(std::move(fd)), timeout_(timeout) {}
  Result<nlohmann::json> ReadMessage();

  UniqueFd fd_;
  std::chrono::milliseconds timeout_;
  std::string buffer_;
  std::string path_;
};

}  // namespace forkvmm
