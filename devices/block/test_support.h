// Helpers shared by the block backend tests.
#pragma once

#include <cstdint>
#include <random>
#include <string>
#include <vector>

namespace forkvmm::block::testing {

// A directory under $TMPDIR (or /tmp) removed with its contents on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }
  std::string File(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// Deterministic pseudo-random bytes.
std::vector<uint8_t> RandomBytes(size_t size, uint32_t seed);

// Reads a whole file; an empty vector when it cannot be read.
std::vector<uint8_t> ReadFileBytes(const std::string& path);
void WriteFileBytes(const std::string& path, const std::vector<uint8_t>& bytes);
// A hex digest of the file contents (FNV-1a 64), for unchanged-file checks.
std::string HashFile(const std::string& path);

}  // namespace forkvmm::block::testing
