#include "tools/guest_paths.h"

#include <cstdlib>
#include <fstream>
#include <sstream>

namespace forkvmm::cli {

std::string DefaultGuestDirectory() {
  const char* cache = std::getenv("FORKVMM_CACHE");
  std::string root = (cache != nullptr && *cache != '\0') ? cache : "/var/cache/forkvmm";
  return root + "/guest/current";
}

std::string ReadTrimmedFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return "";
  std::stringstream buffer;
  buffer << in.rdbuf();
  std::string text = buffer.str();
  while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back()))) text.pop_back();
  return text;
}

}  // namespace forkvmm::cli
