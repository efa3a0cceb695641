// Parsing of human-written sizes such as "512M" or "2G".
#pragma once

#include <cstdint>
#include <string_view>

#include "vmm/base/result.h"

namespace forkvmm {

// Parses a byte count: a decimal number with an optional binary suffix K, M,
// G or T (KiB, MiB, GiB, TiB; case-insensitive, "iB" or "B" may follow).
// Without a suffix the number is multiplied by `default_unit`. Rejects empty
// input, junk, and values that overflow 64 bits.
Result<uint64_t> ParseSize(std::string_view text, uint64_t default_unit = 1);

}  // namespace forkvmm
