#include "devices/block/test_support.h"

#include <fmt/core.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <iterator>

namespace forkvmm::block::testing {

TempDir::TempDir() {
  const char* base = getenv("TMPDIR");
  std::string pattern = std::string(base != nullptr ? base : "/tmp") + "/forkvmm-block-XXXXXX";
  if (mkdtemp(pattern.data()) == nullptr) abort();  // tests cannot run without it
  path_ = pattern;
}

TempDir::~TempDir() {
  std::error_code ignored;
  std::filesystem::remove_all(path_, ignored);
}

std::vector<uint8_t> RandomBytes(size_t size, uint32_t seed) {
  std::mt19937 engine(seed);
  std::vector<uint8_t> bytes(size);
  for (auto& b : bytes) b = static_cast<uint8_t>(engine());
  return bytes;
}

std::vector<uint8_t> ReadFileBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), {});
}

void WriteFileBytes(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

std::string HashFile(const std::string& path) {
  uint64_t hash = 0xcbf29ce484222325ull;
  for (uint8_t b : ReadFileBytes(path)) {
    hash ^= b;
    hash *= 0x100000001b3ull;
  }
  return fmt::format("{:016x}", hash);
}

}  // namespace forkvmm::block::testing
