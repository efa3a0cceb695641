#include "devices/block/qcow2_compress.h"

#include <fmt/core.h>
#include <zlib.h>
#include <zstd.h>

#include <climits>
#include <memory>

namespace forkvmm::block::qcow2 {
namespace {

Status InflateRaw(std::span<const uint8_t> in, std::span<uint8_t> out) {
  z_stream stream{};
  // Negative window bits select a raw deflate stream; 15 accepts any window size.
  if (inflateInit2(&stream, -15) != Z_OK) return Error("zlib inflateInit2 failed");
  stream.next_in = const_cast<Bytef*>(in.data());  // zlib does not write through next_in
  stream.avail_in = static_cast<uInt>(in.size());
  stream.next_out = out.data();
  stream.avail_out = static_cast<uInt>(out.size());
  int ret = inflate(&stream, Z_FINISH);
  uInt missing = stream.avail_out;
  inflateEnd(&stream);
  if (missing == 0) return Ok();
  if (ret == Z_STREAM_END || ret == Z_BUF_ERROR) {
    return Error(fmt::format("compressed cluster decompresses to {} bytes, short of {}",
                             out.size() - missing, out.size()));
  }
  return Error(fmt::format("invalid zlib compressed cluster (zlib error {})", ret));
}

Status DecompressZstd(std::span<const uint8_t> in, std::span<uint8_t> out) {
  std::unique_ptr<ZSTD_DCtx, size_t (*)(ZSTD_DCtx*)> ctx(ZSTD_createDCtx(), ZSTD_freeDCtx);
  if (!ctx) return Error("ZSTD_createDCtx failed");
  ZSTD_inBuffer input{in.data(), in.size(), 0};
  ZSTD_outBuffer output{out.data(), out.size(), 0};
  // A cluster may be stored as several frames; continue across frame ends
  // until the cluster is complete.
  while (output.pos < output.size) {
    size_t before_in = input.pos;
    size_t before_out = output.pos;
    size_t ret = ZSTD_decompressStream(ctx.get(), &output, &input);
    if (ZSTD_isError(ret)) {
      return Error(fmt::format("invalid zstd compressed cluster: {}", ZSTD_getErrorName(ret)));
    }
    if (input.pos == before_in && output.pos == before_out) {
      return Error(fmt::format("compressed cluster decompresses to {} bytes, short of {}",
                               output.pos, output.size));
    }
  }
  return Ok();
}

}  // namespace

Status DecompressCluster(CompressionType type, std::span<const uint8_t> in,
                         std::span<uint8_t> out) {
  if (in.size() > UINT_MAX || out.size() > UINT_MAX) return Error("compressed cluster too large");
  switch (type) {
    case CompressionType::kZlib: return InflateRaw(in, out);
    case CompressionType::kZstd: return DecompressZstd(in, out);
  }
  return Error("unknown compression type");
}

Result<std::vector<uint8_t>> CompressCluster(CompressionType type, std::span<const uint8_t> in) {
  if (type == CompressionType::kZstd) {
    std::vector<uint8_t> out(ZSTD_compressBound(in.size()));
    size_t n = ZSTD_compress(out.data(), out.size(), in.data(), in.size(), 3);
    if (ZSTD_isError(n)) return Error(fmt::format("zstd compression failed: {}", ZSTD_getErrorName(n)));
    out.resize(n);
    return out;
  }
  z_stream stream{};
  // Raw deflate with a 4 KiB window, the stream format qcow2 readers expect.
  if (deflateInit2(&stream, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -12, 9, Z_DEFAULT_STRATEGY) !=
      Z_OK) {
    return Error("zlib deflateInit2 failed");
  }
  std::vector<uint8_t> out(deflateBound(&stream, static_cast<uLong>(in.size())));
  stream.next_in = const_cast<Bytef*>(in.data());  // zlib does not write through next_in
  stream.avail_in = static_cast<uInt>(in.size());
  stream.next_out = out.data();
  stream.avail_out = static_cast<uInt>(out.size());
  int ret = deflate(&stream, Z_FINISH);
  size_t produced = out.size() - stream.avail_out;
  deflateEnd(&stream);
  if (ret != Z_STREAM_END) return Error(fmt::format("zlib compression failed (error {})", ret));
  out.resize(produced);
  return out;
}

}  // namespace forkvmm::block::qcow2
