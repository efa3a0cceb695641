#include "devices/block/iovec.h"

#include <algorithm>
#include <cstring>

namespace forkvmm::block {

uint64_t IovecTotal(std::span<const iovec> iov) {
  uint64_t total = 0;
  for (const iovec& v : iov) total += v.iov_len;
  return total;
}

IovecList SliceIovecs(std::span<const iovec> iov, uint64_t offset, uint64_t length) {
  IovecList out;
  for (const iovec& v : iov) {
    if (length == 0) break;
    if (offset >= v.iov_len) {
      offset -= v.iov_len;
      continue;
    }
    uint64_t n = std::min<uint64_t>(v.iov_len - offset, length);
    out.push_back(iovec{static_cast<uint8_t*>(v.iov_base) + offset, n});
    length -= n;
    offset = 0;
  }
  return out;
}

void ZeroIovecs(std::span<const iovec> iov) {
  for (const iovec& v : iov) std::memset(v.iov_base, 0, v.iov_len);
}

void CopyToIovecs(std::span<const iovec> iov, std::span<const uint8_t> src) {
  size_t pos = 0;
  for (const iovec& v : iov) {
    size_t n = std::min(v.iov_len, src.size() - pos);
    std::memcpy(v.iov_base, src.data() + pos, n);
    pos += n;
  }
}

void CopyFromIovecs(std::span<const iovec> iov, std::span<uint8_t> dst) {
  size_t pos = 0;
  for (const iovec& v : iov) {
    size_t n = std::min(v.iov_len, dst.size() - pos);
    std::memcpy(dst.data() + pos, v.iov_base, n);
    pos += n;
  }
}

bool IovecsAreZero(std::span<const iovec> iov) {
  for (const iovec& v : iov) {
    const auto* bytes = static_cast<const uint8_t*>(v.iov_base);
    if (!std::all_of(bytes, bytes + v.iov_len, [](uint8_t b) { return b == 0; })) return false;
  }
  return true;
}

void AdvanceIovecs(IovecList& iov, uint64_t count) {
  size_t first = 0;
  while (first < iov.size() && count >= iov[first].iov_len) {
    count -= iov[first].iov_len;
    ++first;
  }
  iov.erase(iov.begin(), iov.begin() + static_cast<std::ptrdiff_t>(first));
  if (!iov.empty() && count > 0) {
    iov[0].iov_base = static_cast<uint8_t*>(iov[0].iov_base) + count;
    iov[0].iov_len -= count;
  }
}

}  // namespace forkvmm::block
