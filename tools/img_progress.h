// A progress bar for long `forkvmm img` operations.
//
// Draws on stderr, and only when stderr is a terminal and the operation has
// run for more than kDelay, so quick commands and scripts see no output.
#pragma once

#include <chrono>
#include <cstdint>

namespace forkvmm::cli::img {

class ProgressBar {
 public:
  static constexpr std::chrono::milliseconds kDelay{300};

  // `enabled` is false for --quiet.
  explicit ProgressBar(bool enabled);
  ~ProgressBar();

  void Update(uint64_t done, uint64_t total);
  // Completes the bar (if one was drawn) and ends its line.
  void Finish();

 private:
  bool enabled_;
  bool drawn_ = false;
  int last_percent_ = -1;
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_draw_;
};

}  // namespace forkvmm::cli::img
