// A single-threaded epoll loop for a VM process's main thread: signals,
// console input, the control socket and stop requests from other threads.
#pragma once

#include <sys/epoll.h>

#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "vmm/base/result.h"
#include "vmm/base/unique_fd.h"

namespace forkvmm {

class EventLoop {
 public:
  using Handler = std::function<void(uint32_t events)>;

  static Result<std::unique_ptr<EventLoop>> Create();

  // Calls `handler` on the loop thread whenever `fd` has any of `events`
  // (EPOLLIN, ...). The fd stays owned by the caller and must be removed
  // before it is closed.
  Status Add(int fd, uint32_t events, Handler handler);
  void Remove(int fd);

  // Runs handlers until Quit(). Returns an error only if epoll_wait fails.
  Status Run();
  // Runs `task` on the loop thread soon. Safe from any thread.
  void Post(std::function<void()> task);
  // Makes Run() return after the current handler. Safe from any thread.
  void Quit();

 private:
  EventLoop() = default;
  void DrainPosted();

  UniqueFd epoll_fd_;
  UniqueFd wake_fd_;
  std::map<int, std::shared_ptr<Handler>> handlers_;
  std::mutex mutex_;
  std::vector<std::function<void()>> posted_;
  bool quit_ = false;
};

}  // namespace forkvmm
