// Parsing of virtio-blk requests (virtio 1.2 §5.2.6): a descriptor chain in
// guest memory in, a typed request out.
//
// A request is a device-readable header (type, reserved, sector), then
// data, then one device-writable status byte. The parser makes no
// assumption about how these are split into descriptors (virtio 1.2
// §2.7.4): it treats the readable buffers as one byte stream and the
// writable ones as another, and the status byte is the last writable byte.
//
// Everything in the chain is hostile. The parser copies the header and the
// discard/write-zeroes segments out of guest memory once and checks every
// length and sector range against the disk. Anything invalid becomes a
// status to complete the request with, never an error that would leave the
// request unanswered.
#pragma once

#include <linux/virtio_blk.h>

#include <cstdint>
#include <optional>
#include <string_view>
#include <vector>

#include "devices/block/iovec.h"
#include "devices/virtio/virtqueue.h"
#include "memory/guest_memory.h"

namespace forkvmm::devices::virtio {

inline constexpr uint64_t kSectorSize = 512;
// The length of the device ID that VIRTIO_BLK_T_GET_ID returns.
inline constexpr uint32_t kBlockIdBytes = VIRTIO_BLK_ID_BYTES;

// The disk size, negotiated features and limits that requests are checked
// against.
struct BlockRequestLimits {
  uint64_t capacity_sectors = 0;
  bool read_only = false;
  // Whether the driver accepted VIRTIO_BLK_F_DISCARD / _WRITE_ZEROES.
  bool discard = false;
  bool write_zeroes = false;
  uint32_t max_discard_sectors = 0;
  uint32_t max_discard_segments = 0;
  uint32_t max_write_zeroes_sectors = 0;
  uint32_t max_write_zeroes_segments = 0;
};

enum class BlockRequestType { kRead, kWrite, kFlush, kGetId, kDiscard, kWriteZeroes };

// One segment of a discard or write-zeroes request.
struct BlockRange {
  uint64_t sector = 0;
  uint32_t sectors = 0;
  // VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP: the device may deallocate the range.
  bool unmap = false;

  bool operator==(const BlockRange&) const = default;
};

struct ParsedBlockRequest {
  // VIRTIO_BLK_S_OK for a valid request that the device must carry out, or
  // VIRTIO_BLK_S_IOERR or _UNSUPP for one to complete at once with that
  // status.
  uint8_t status = VIRTIO_BLK_S_OK;
  // The reason the request is invalid, for the log, or empty when it is valid.
  std::string_view error;

  BlockRequestType type = BlockRequestType::kRead;
  uint64_t sector = 0;
  // The data buffers as host addresses of guest RAM, in chain order: the
  // destination of kRead and kGetId, the source of kWrite.
  block::IovecList data;
  uint64_t data_bytes = 0;
  // kDiscard and kWriteZeroes.
  std::vector<BlockRange> ranges;

  // Guest-physical address of the status byte, or nullopt when the chain
  // has no usable status byte (see DescriptorChain::complete). Such a
  // request can only be returned with a used length of 0.
  std::optional<uint64_t> status_address;
  // The used length to report when the request completes with
  // VIRTIO_BLK_S_OK, and with an error. Both count only bytes the device
  // writes from the start of the writable buffers (virtio 1.2 §2.7.8).
  uint32_t used_length_ok = 0;
  uint32_t used_length_error = 0;
};

// Parses `chain`. `memory` must contain the chain's buffers, which
// Virtqueue::Pop checked. Never fails, because an invalid request comes
// back with its error status set.
ParsedBlockRequest ParseBlockRequest(const memory::GuestMemory& memory,
                                     const DescriptorChain& chain,
                                     const BlockRequestLimits& limits);

}  // namespace forkvmm::devices::virtio
