#include "devices/virtio/block_request.h"

#include <algorithm>
#include <limits>
#include <span>

namespace forkvmm::devices::virtio {
namespace {

static_assert(sizeof(virtio_blk_outhdr) == 16);
static_assert(sizeof(virtio_blk_discard_write_zeroes) == 16);

using Buffers = std::span<const DescriptorBuffer>;

uint64_t TotalBytes(Buffers buffers) {
  uint64_t total = 0;
  for (const DescriptorBuffer& buffer : buffers) total += buffer.length;
  return total;
}

uint32_t ClampToU32(uint64_t value) {
  return static_cast<uint32_t>(std::min<uint64_t>(value, std::numeric_limits<uint32_t>::max()));
}

// Calls `visit(guest_address, length)` for each piece of bytes
// [offset, offset + length) of the stream formed by `buffers`. The range
// must lie inside the stream.
template <typename Visit>
void ForEachPiece(Buffers buffers, uint64_t offset, uint64_t length, Visit visit) {
  for (const DescriptorBuffer& buffer : buffers) {
    if (length == 0) return;
    if (offset >= buffer.length) {
      offset -= buffer.length;
      continue;
    }
    const uint64_t piece = std::min<uint64_t>(buffer.length - offset, length);
    visit(buffer.address + offset, piece);
    offset = 0;
    length -= piece;
  }
}

// Copies bytes [offset, offset + out.size()) of the stream into `out`.
// Returns false if guest memory could not be read.
bool GatherRead(const memory::GuestMemory& memory, Buffers buffers, uint64_t offset,
                std::span<uint8_t> out) {
  bool ok = true;
  uint8_t* next = out.data();
  ForEachPiece(buffers, offset, out.size(), [&](uint64_t address, uint64_t length) {
    ok = ok && memory.Read(address, next, length).ok();
    next += length;
  });
  return ok;
}

// Returns host iovecs for bytes [offset, offset + length) of the stream, or
// std::nullopt if a piece is not in guest RAM.
std::optional<block::IovecList> StreamIovecs(const memory::GuestMemory& memory, Buffers buffers,
                                             uint64_t offset, uint64_t length) {
  block::IovecList iov;
  bool ok = true;
  ForEachPiece(buffers, offset, length, [&](uint64_t address, uint64_t piece) {
    auto host = memory.HostAddress(address, piece);
    if (!host.ok()) {
      ok = false;
      return;
    }
    iov.push_back({*host, piece});
  });
  if (!ok) return std::nullopt;
  return iov;
}

bool SectorsInside(uint64_t sector, uint64_t sectors, uint64_t capacity) {
  return sector <= capacity && sectors <= capacity - sector;
}

// The parts of a chain the request types share.
struct Framing {
  Buffers readable;
  Buffers writable;
  uint64_t readable_bytes = 0;
  uint64_t writable_bytes = 0;
  // Writable bytes before the status byte.
  uint64_t data_in_bytes = 0;
  // The used length when the device writes only the status byte.
  uint32_t status_only_length = 0;
};

ParsedBlockRequest Invalid(ParsedBlockRequest request, uint8_t status, std::string_view why) {
  request.status = status;
  request.error = why;
  return request;
}

constexpr uint64_t kHeaderBytes = sizeof(virtio_blk_outhdr);

ParsedBlockRequest ParseTransfer(const memory::GuestMemory& memory, const Framing& framing,
                                 ParsedBlockRequest request, const BlockRequestLimits& limits) {
  const bool read = request.type == BlockRequestType::kRead;
  if (!read && limits.read_only) {
    return Invalid(std::move(request), VIRTIO_BLK_S_IOERR, "write to a read-only disk");
  }
  const uint64_t bytes = read ? framing.data_in_bytes : framing.readable_bytes - kHeaderBytes;
  if (bytes % kSectorSize != 0) {
    return Invalid(std::move(request), VIRTIO_BLK_S_IOERR, "data length not a multiple of 512");
  }
  if (!SectorsInside(request.sector, bytes / kSectorSize, limits.capacity_sectors)) {
    return Invalid(std::move(request), VIRTIO_BLK_S_IOERR, "sectors past the end of the disk");
  }
  auto iov = read ? StreamIovecs(memory, framing.writable, 0, bytes)
                  : StreamIovecs(memory, framing.readable, kHeaderBytes, bytes);
  if (!iov) return Invalid(std::move(request), VIRTIO_BLK_S_IOERR, "data outside guest RAM");
  request.data = std::move(*iov);
  request.data_bytes = bytes;
  return request;
}

ParsedBlockRequest ParseGetId(const memory::GuestMemory& memory, const Framing& framing,
                              ParsedBlockRequest request) {
  const uint64_t bytes = std::min<uint64_t>(framing.data_in_bytes, kBlockIdBytes);
  auto iov = StreamIovecs(memory, framing.writable, 0, bytes);
  if (!iov) return Invalid(std::move(request), VIRTIO_BLK_S_IOERR, "ID buffer outside guest RAM");
  request.data = std::move(*iov);
  request.data_bytes = bytes;
  // Only the ID bytes and the status are written. With a buffer longer than
  // the ID, the written bytes are not contiguous.
  if (framing.data_in_bytes > kBlockIdBytes) request.used_length_ok = kBlockIdBytes;
  return request;
}

// Discard and write-zeroes: a list of segments after the header.
ParsedBlockRequest ParseRanges(const memory::GuestMemory& memory, const Framing& framing,
                               ParsedBlockRequest request, const BlockRequestLimits& limits) {
  const bool discard = request.type == BlockRequestType::kDiscard;
  if (discard ? !limits.discard : !limits.write_zeroes) {
    return Invalid(std::move(request), VIRTIO_BLK_S_UNSUPP, "request type not negotiated");
  }
  if (limits.read_only) {
    return Invalid(std::move(request), VIRTIO_BLK_S_IOERR, "write to a read-only disk");
  }
  const uint64_t bytes = framing.readable_bytes - kHeaderBytes;
  const uint64_t max_segments =
      discard ? limits.max_discard_segments : limits.max_write_zeroes_segments;
  if (bytes == 0 || bytes % sizeof(virtio_blk_discard_write_zeroes) != 0) {
    return Invalid(std::move(request), VIRTIO_BLK_S_IOERR, "segment list length not 16*n");
  }
  const uint64_t count = bytes / sizeof(virtio_blk_discard_write_zeroes);
  if (count > max_segments) {
    return Invalid(std::move(request), VIRTIO_BLK_S_IOERR, "more segments than the limit");
  }
  // `count` is at most the segment limit, so this allocation is bounded.
  std::vector<virtio_blk_discard_write_zeroes> segments(count);
  if (!GatherRead(memory, framing.readable, kHeaderBytes,
                  std::span(reinterpret_cast<uint8_t*>(segments.data()), bytes))) {
    return Invalid(std::move(request), VIRTIO_BLK_S_IOERR, "segments outside guest RAM");
  }
  const uint32_t allowed_flags = discard ? 0 : VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP;
  for (const auto& segment : segments) {
    if (segment.flags & ~allowed_flags) {
      return Invalid(std::move(request), VIRTIO_BLK_S_UNSUPP, "unknown segment flags");
    }
  }
  const uint32_t max_sectors =
      discard ? limits.max_discard_sectors : limits.max_write_zeroes_sectors;
  for (const auto& segment : segments) {
    if (segment.num_sectors > max_sectors) {
      return Invalid(std::move(request), VIRTIO_BLK_S_IOERR, "segment larger than the limit");
    }
    if (!SectorsInside(segment.sector, segment.num_sectors, limits.capacity_sectors)) {
      return Invalid(std::move(request), VIRTIO_BLK_S_IOERR, "segment past the end of the disk");
    }
    request.ranges.push_back({segment.sector, segment.num_sectors,
                              (segment.flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP) != 0});
  }
  return request;
}

// Splits the chain into its readable and writable streams and locates the
// status byte.
Framing FrameChain(const DescriptorChain& chain, ParsedBlockRequest& request) {
  Framing framing;
  Buffers buffers = chain.buffers;
  const auto first_writable =
      std::find_if(buffers.begin(), buffers.end(),
                   [](const DescriptorBuffer& buffer) { return buffer.device_writable; });
  framing.readable = buffers.first(static_cast<size_t>(first_writable - buffers.begin()));
  framing.writable = buffers.subspan(framing.readable.size());
  framing.readable_bytes = TotalBytes(framing.readable);
  framing.writable_bytes = TotalBytes(framing.writable);
  framing.data_in_bytes = framing.writable_bytes > 0 ? framing.writable_bytes - 1 : 0;
  // After a chain error `writable` may miss buffers, so nothing is known
  // to be contiguous with the status byte.
  framing.status_only_length =
      chain.error == ChainError::kNone && framing.writable_bytes == 1 ? 1 : 0;

  const bool status_usable = chain.complete && !IsStructuralChainError(chain.error) &&
                             !buffers.empty() && buffers.back().device_writable &&
                             buffers.back().length > 0;
  if (status_usable) {
    request.status_address = buffers.back().address + buffers.back().length - 1;
  }
  request.used_length_error = framing.status_only_length;
  return framing;
}

}  // namespace

ParsedBlockRequest ParseBlockRequest(const memory::GuestMemory& memory,
                                     const DescriptorChain& chain,
                                     const BlockRequestLimits& limits) {
  ParsedBlockRequest request;
  const Framing framing = FrameChain(chain, request);
  if (!request.status_address) {
    return Invalid(std::move(request), VIRTIO_BLK_S_IOERR, "no writable status byte at the end");
  }
  if (chain.error != ChainError::kNone) {
    return Invalid(std::move(request), VIRTIO_BLK_S_IOERR, ChainErrorName(chain.error));
  }
  virtio_blk_outhdr header{};
  if (framing.readable_bytes < kHeaderBytes ||
      !GatherRead(memory, framing.readable, 0,
                  std::span(reinterpret_cast<uint8_t*>(&header), sizeof(header)))) {
    return Invalid(std::move(request), VIRTIO_BLK_S_IOERR, "header shorter than 16 bytes");
  }
  request.sector = header.sector;
  request.used_length_ok = framing.status_only_length;

  switch (header.type) {
    case VIRTIO_BLK_T_IN:
      request.type = BlockRequestType::kRead;
      request.used_length_ok = ClampToU32(framing.writable_bytes);
      return ParseTransfer(memory, framing, std::move(request), limits);
    case VIRTIO_BLK_T_OUT:
      request.type = BlockRequestType::kWrite;
      return ParseTransfer(memory, framing, std::move(request), limits);
    case VIRTIO_BLK_T_FLUSH:
      request.type = BlockRequestType::kFlush;
      return request;
    case VIRTIO_BLK_T_GET_ID:
      request.type = BlockRequestType::kGetId;
      request.used_length_ok = ClampToU32(framing.writable_bytes);
      return ParseGetId(memory, framing, std::move(request));
    case VIRTIO_BLK_T_DISCARD:
      request.type = BlockRequestType::kDiscard;
      return ParseRanges(memory, framing, std::move(request), limits);
    case VIRTIO_BLK_T_WRITE_ZEROES:
      request.type = BlockRequestType::kWriteZeroes;
      return ParseRanges(memory, framing, std::move(request), limits);
    default:
      return Invalid(std::move(request), VIRTIO_BLK_S_UNSUPP, "unsupported request type");
  }
}

}  // namespace forkvmm::devices::virtio
