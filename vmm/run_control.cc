#include "vmm/run_control.h"

namespace forkvmm {

bool RunControl::WaitUntilRunnable(size_t, const std::function<void()>& clear_exit_request,
                                   const std::function<void()>& before_park) {
  std::unique_lock lock(mutex_);
  if (request_ != Request::kRun && before_park) {
    // If a Resume() comes meanwhile, before_park has done no harm.
    lock.unlock();
    before_park();
    lock.lock();
  }
  if (request_ == Request::kPause) {
    ++parked_;
    changed_.notify_all();
    changed_.wait(lock, [this] { return request_ != Request::kPause; });
    --parked_;
  }
  if (request_ == Request::kStop) return false;
  clear_exit_request();
  return true;
}

void RunControl::KickAll() {
  for (size_t i = 0; i < vcpu_count_; ++i) kick_(i);
}

void RunControl::PauseBeforeStart() {
  std::lock_guard lock(mutex_);
  if (request_ == Request::kRun) request_ = Request::kPause;
}

bool RunControl::Pause() {
  std::unique_lock lock(mutex_);
  if (request_ == Request::kStop) return false;
  request_ = Request::kPause;
  KickAll();
  changed_.wait(lock, [this] {
    return request_ == Request::kStop || parked_ + exited_ == vcpu_count_;
  });
  return request_ != Request::kStop;
}

void RunControl::Resume() {
  std::lock_guard lock(mutex_);
  if (request_ == Request::kPause) request_ = Request::kRun;
  changed_.notify_all();
}

void RunControl::Stop(VmExit exit) {
  std::function<void()> callback;
  {
    std::lock_guard lock(mutex_);
    if (stop_requested_) return;
    stop_requested_ = true;
    exit_ = std::move(exit);
    request_ = Request::kStop;
    KickAll();
    changed_.notify_all();
    callback = on_stop_;
  }
  if (callback) callback();
}

bool RunControl::stopped() const {
  std::lock_guard lock(mutex_);
  return stop_requested_;
}

VmExit RunControl::WaitForStop() {
  std::unique_lock lock(mutex_);
  changed_.wait(lock, [this] { return stop_requested_; });
  return exit_;
}

void RunControl::VcpuExited() {
  std::lock_guard lock(mutex_);
  ++exited_;
  changed_.notify_all();
}

void RunControl::OnStop(std::function<void()> callback) {
  std::lock_guard lock(mutex_);
  on_stop_ = std::move(callback);
}

}  // namespace forkvmm
