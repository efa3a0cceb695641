#include "vmm/base/event_loop.h"

#include <sys/eventfd.h>
#include <unistd.h>

namespace forkvmm {

Result<std::unique_ptr<EventLoop>> EventLoop::Create() {
  std::unique_ptr<EventLoop> loop(new EventLoop());
  loop->epoll_fd_.Reset(epoll_create1(EPOLL_CLOEXEC));
  if (!loop->epoll_fd_.valid()) return Error::FromErrno("epoll_create1");
  loop->wake_fd_.Reset(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!loop->wake_fd_.valid()) return Error::FromErrno("eventfd");
  EventLoop* raw = loop.get();
  TRY(loop->Add(loop->wake_fd_.get(), EPOLLIN, [raw](uint32_t) {
    uint64_t value;
    while (read(raw->wake_fd_.get(), &value, sizeof(value)) > 0) {
    }
    raw->DrainPosted();
  }));
  return loop;
}

Status EventLoop::Add(int fd, uint32_t events, Handler handler) {
  epoll_event event{};
  event.events = events;
  event.data.fd = fd;
  if (epoll_ctl(epoll_fd_.get(), EPOLL_CTL_ADD, fd, &event) != 0) {
    return Error::FromErrno("epoll_ctl add", "fd " + std::to_string(fd));
  }
  handlers_[fd] = std::make_shared<Handler>(std::move(handler));
  return Ok();
}

void EventLoop::Remove(int fd) {
  epoll_ctl(epoll_fd_.get(), EPOLL_CTL_DEL, fd, nullptr);
  handlers_.erase(fd);
}

Status EventLoop::Run() {
  epoll_event events[16];
  while (true) {
    {
      std::lock_guard lock(mutex_);
      if (quit_) {
        quit_ = false;
        return Ok();
      }
    }
    int count = epoll_wait(epoll_fd_.get(), events, 16, -1);
    if (count < 0) {
      if (errno == EINTR) continue;
      return Error::FromErrno("epoll_wait");
    }
    for (int i = 0; i < count; ++i) {
      auto it = handlers_.find(events[i].data.fd);
      if (it == handlers_.end()) continue;  // removed by an earlier handler
      // Holding a reference keeps the handler alive if it removes itself.
      std::shared_ptr<Handler> handler = it->second;
      (*handler)(events[i].events);
    }
  }
}

void EventLoop::Post(std::function<void()> task) {
  {
    std::lock_guard lock(mutex_);
    posted_.push_back(std::move(task));
  }
  uint64_t one = 1;
  ssize_t unused = write(wake_fd_.get(), &one, sizeof(one));
  (void)unused;
}

void EventLoop::Quit() {
  {
    std::lock_guard lock(mutex_);
    quit_ = true;
  }
  uint64_t one = 1;
  ssize_t unused = write(wake_fd_.get(), &one, sizeof(one));
  (void)unused;
}

void EventLoop::DrainPosted() {
  std::vector<std::function<void()>> tasks;
  {
    std::lock_guard lock(mutex_);
    tasks.swap(posted_);
  }
  for (auto& task : tasks) task();
}

}  // namespace forkvmm
