#include "vmm/base/units.h"

#include <cctype>
#include <string>

#include <fmt/core.h>

namespace forkvmm {

Result<uint64_t> ParseSize(std::string_view text, uint64_t default_unit) {
  auto invalid = [&text] {
    return Error(fmt::format("invalid size '{}': expected a number with an optional K, M, G or T "
                             "suffix",
                             text));
  };
  size_t digits = 0;
  uint64_t value = 0;
  while (digits < text.size() && std::isdigit(static_cast<unsigned char>(text[digits]))) {
    uint64_t digit = static_cast<uint64_t>(text[digits] - '0');
    if (value > (UINT64_MAX - digit) / 10) return Error(fmt::format("size '{}' is too large", text));
    value = value * 10 + digit;
    ++digits;
  }
  if (digits == 0) return invalid();
  std::string suffix(text.substr(digits));
  for (char& c : suffix) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  if (suffix.ends_with("IB")) {
    suffix.resize(suffix.size() - 2);
  } else if (suffix.size() == 2 && suffix.ends_with("B")) {
    suffix.resize(1);
  }
  uint64_t unit = default_unit;
  if (suffix == "B") {
    unit = 1;
  } else if (suffix == "K") {
    unit = uint64_t{1} << 10;
  } else if (suffix == "M") {
    unit = uint64_t{1} << 20;
  } else if (suffix == "G") {
    unit = uint64_t{1} << 30;
  } else if (suffix == "T") {
    unit = uint64_t{1} << 40;
  } else if (!suffix.empty()) {
    return invalid();
  }
  if (unit != 0 && value > UINT64_MAX / unit) {
    return Error(fmt::format("size '{}' is too large", text));
  }
  return value * unit;
}

}  // namespace forkvmm
