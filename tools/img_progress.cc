#include "tools/img_progress.h"

#include <fmt/core.h>
#include <unistd.h>

#include <string>

namespace forkvmm::cli::img {
namespace {

constexpr int kBarWidth = 40;
constexpr std::chrono::milliseconds kRedrawInterval{100};

}  // namespace

ProgressBar::ProgressBar(bool enabled)
    : enabled_(enabled && ::isatty(STDERR_FILENO) == 1),
      start_(std::chrono::steady_clock::now()) {}

ProgressBar::~ProgressBar() { Finish(); }

void ProgressBar::Update(uint64_t done, uint64_t total) {
  if (!enabled_ || total == 0) return;
  auto now = std::chrono::steady_clock::now();
  if (now - start_ < kDelay) return;
  int percent = static_cast<int>(done * 100 / total);
  if (percent == last_percent_ || (drawn_ && now - last_draw_ < kRedrawInterval)) return;
  int filled = percent * kBarWidth / 100;
  std::string line = fmt::format("\r  [{}{}] {:3d}%", std::string(filled, '#'),
                                 std::string(kBarWidth - filled, ' '), percent);
  ssize_t unused = ::write(STDERR_FILENO, line.data(), line.size());
  (void)unused;
  drawn_ = true;
  last_percent_ = percent;
  last_draw_ = now;
}

void ProgressBar::Finish() {
  if (!drawn_) return;
  std::string line = fmt::format("\r  [{}] 100%\n", std::string(kBarWidth, '#'));
  ssize_t unused = ::write(STDERR_FILENO, line.data(), line.size());
  (void)unused;
  drawn_ = false;
}

}  // namespace forkvmm::cli::img
