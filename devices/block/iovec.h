// Helpers for scatter-gather lists (struct iovec arrays).
//
// Block requests carry their buffers as iovecs pointing into guest memory.
// These helpers cut a byte range out of such a list and copy or zero it.
// They never touch memory outside the buffers the iovecs describe.
#pragma once

#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

namespace forkvmm::block {

using IovecList = std::vector<iovec>;

// Returns the sum of the iov_len fields.
uint64_t IovecTotal(std::span<const iovec> iov);

// Returns the iovecs covering bytes [offset, offset + length) of `iov`.
// The range must lie inside the list.
IovecList SliceIovecs(std::span<const iovec> iov, uint64_t offset, uint64_t length);

// Fills every buffer of `iov` with zeros.
void ZeroIovecs(std::span<const iovec> iov);

// Copies `src` into the buffers of `iov` in order; src.size() must equal the list total.
void CopyToIovecs(std::span<const iovec> iov, std::span<const uint8_t> src);

// Copies the buffers of `iov` in order into `dst`; dst.size() must equal the list total.
void CopyFromIovecs(std::span<const iovec> iov, std::span<uint8_t> dst);

// Returns true when every byte in the buffers of `iov` is zero.
bool IovecsAreZero(std::span<const iovec> iov);

// Drops the first `count` bytes of `iov` in place (used after a short transfer).
void AdvanceIovecs(IovecList& iov, uint64_t count);

// A single iovec over a byte span.
inline iovec MakeIovec(std::span<const uint8_t> bytes) {
  // The const_cast is safe: iovecs for writes are only read from.
  return iovec{const_cast<uint8_t*>(bytes.data()), bytes.size()};
}

}  // namespace forkvmm::block
