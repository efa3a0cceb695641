#include "devices/virtio/block_request.h"

#include <gtest/gtest.h>

#include "devices/virtio/test_ring.h"

namespace forkvmm::devices::virtio {
namespace {

constexpr uint64_t kCapacity = 2048;  // sectors: a 1 MiB disk

class BlockRequestTest : public ::testing::Test {
 protected:
  uint64_t Header(uint32_t type, uint64_t sector) {
    virtio_blk_outhdr header{type, 0, sector};
    const uint64_t address = ring_.Allocate(sizeof(header));
    EXPECT_TRUE(memory_.WriteObject(address, header).ok());
    return address;
  }

  uint64_t Segments(const std::vector<virtio_blk_discard_write_zeroes>& segments) {
    const uint64_t bytes = segments.size() * sizeof(virtio_blk_discard_write_zeroes);
    const uint64_t address = ring_.Allocate(bytes);
    EXPECT_TRUE(memory_.Write(address, segments.data(), bytes).ok());
    return address;
  }

  // A chain of header, optional data and a 1-byte status buffer.
  DescriptorChain Chain(uint64_t header, std::vector<DescriptorBuffer> data = {}) {
    DescriptorChain chain;
    chain.buffers.push_back({header, 16, false});
    for (const DescriptorBuffer& buffer : data) chain.buffers.push_back(buffer);
    status_ = ring_.Allocate(1);
    chain.buffers.push_back({status_, 1, true});
    chain.complete = true;
    return chain;
  }

  ParsedBlockRequest Parse(const DescriptorChain& chain) {
    return ParseBlockRequest(memory_, chain, limits_);
  }

  uint8_t* Host(uint64_t address) { return memory_.HostAddress(address, 1).value(); }

  memory::GuestMemory memory_ = testing::MakeTestMemory();
  testing::TestRing ring_{memory_, 8};
  BlockRequestLimits limits_{.capacity_sectors = kCapacity,
                             .discard = true,
                             .write_zeroes = true,
                             .max_discard_sectors = 1024,
                             .max_discard_segments = 4,
                             .max_write_zeroes_sectors = 1024,
                             .max_write_zeroes_segments = 1};
  uint64_t status_ = 0;
};

TEST_F(BlockRequestTest, Read) {
  const uint64_t data = ring_.Allocate(1024);
  ParsedBlockRequest request = Parse(Chain(Header(VIRTIO_BLK_T_IN, 7), {{data, 1024, true}}));
  EXPECT_EQ(request.status, VIRTIO_BLK_S_OK) << request.error;
  EXPECT_EQ(request.type, BlockRequestType::kRead);
  EXPECT_EQ(request.sector, 7u);
  EXPECT_EQ(request.data_bytes, 1024u);
  ASSERT_EQ(request.data.size(), 1u);
  EXPECT_EQ(request.data[0].iov_base, Host(data));
  EXPECT_EQ(request.data[0].iov_len, 1024u);
  EXPECT_EQ(request.status_address, status_);
  EXPECT_EQ(request.used_length_ok, 1025u);
  EXPECT_EQ(request.used_length_error, 0u);
}

TEST_F(BlockRequestTest, HeaderAndStatusShareBuffersWithData) {
  // The header is split 8 + 8, and data and status share one 513-byte
  // writable buffer.
  const uint64_t header = Header(VIRTIO_BLK_T_IN, 3);
  const uint64_t data = ring_.Allocate(513);
  DescriptorChain chain;
  chain.buffers = {{header, 8, false}, {header + 8, 8, false}, {data, 513, true}};
  chain.complete = true;
  ParsedBlockRequest request = Parse(chain);
  EXPECT_EQ(request.status, VIRTIO_BLK_S_OK) << request.error;
  EXPECT_EQ(request.sector, 3u);
  EXPECT_EQ(request.data_bytes, 512u);
  ASSERT_EQ(request.data.size(), 1u);
  EXPECT_EQ(request.data[0].iov_len, 512u);
  EXPECT_EQ(request.status_address, data + 512);
}

TEST_F(BlockRequestTest, WriteWithDataAfterHeaderInOneBuffer) {
  const uint64_t buffer = ring_.Allocate(16 + 1024);
  virtio_blk_outhdr header{VIRTIO_BLK_T_OUT, 0, 100};
  ASSERT_TRUE(memory_.WriteObject(buffer, header).ok());
  DescriptorChain chain;
  chain.buffers = {{buffer, 16 + 512, false}, {buffer + 16 + 512, 512, false}};
  status_ = ring_.Allocate(1);
  chain.buffers.push_back({status_, 1, true});
  chain.complete = true;
  ParsedBlockRequest request = Parse(chain);
  EXPECT_EQ(request.status, VIRTIO_BLK_S_OK) << request.error;
  EXPECT_EQ(request.type, BlockRequestType::kWrite);
  EXPECT_EQ(request.data_bytes, 1024u);
  ASSERT_EQ(request.data.size(), 2u);
  EXPECT_EQ(request.data[0].iov_base, Host(buffer + 16));
  EXPECT_EQ(request.data[0].iov_len, 512u);
  EXPECT_EQ(request.data[1].iov_base, Host(buffer + 16 + 512));
  EXPECT_EQ(request.used_length_ok, 1u);
}

TEST_F(BlockRequestTest, LastSectorAndOnePastIt) {
  const uint64_t data = ring_.Allocate(1024);
  EXPECT_EQ(Parse(Chain(Header(VIRTIO_BLK_T_IN, kCapacity - 1), {{data, 512, true}})).status,
            VIRTIO_BLK_S_OK);
  EXPECT_EQ(Parse(Chain(Header(VIRTIO_BLK_T_OUT, kCapacity - 1), {{data, 512, false}})).status,
            VIRTIO_BLK_S_OK);
  EXPECT_EQ(Parse(Chain(Header(VIRTIO_BLK_T_IN, kCapacity - 1), {{data, 1024, true}})).status,
            VIRTIO_BLK_S_IOERR);
  EXPECT_EQ(Parse(Chain(Header(VIRTIO_BLK_T_IN, kCapacity), {{data, 512, true}})).status,
            VIRTIO_BLK_S_IOERR);
  EXPECT_EQ(Parse(Chain(Header(VIRTIO_BLK_T_OUT, kCapacity), {{data, 512, false}})).status,
            VIRTIO_BLK_S_IOERR);
  // A sector number whose byte offset overflows.
  EXPECT_EQ(Parse(Chain(Header(VIRTIO_BLK_T_IN, ~uint64_t{0}), {{data, 512, true}})).status,
            VIRTIO_BLK_S_IOERR);
}

TEST_F(BlockRequestTest, DataNotWholeSectors) {
  const uint64_t data = ring_.Allocate(1024);
  ParsedBlockRequest request = Parse(Chain(Header(VIRTIO_BLK_T_IN, 0), {{data, 500, true}}));
  EXPECT_EQ(request.status, VIRTIO_BLK_S_IOERR);
  EXPECT_EQ(request.status_address, status_);
  EXPECT_EQ(Parse(Chain(Header(VIRTIO_BLK_T_OUT, 0), {{data, 513, false}})).status,
            VIRTIO_BLK_S_IOERR);
}

TEST_F(BlockRequestTest, WriteToReadOnlyDisk) {
  limits_.read_only = true;
  const uint64_t data = ring_.Allocate(512);
  ParsedBlockRequest request = Parse(Chain(Header(VIRTIO_BLK_T_OUT, 0), {{data, 512, false}}));
  EXPECT_EQ(request.status, VIRTIO_BLK_S_IOERR);
  EXPECT_EQ(request.used_length_error, 1u);
  EXPECT_EQ(Parse(Chain(Header(VIRTIO_BLK_T_IN, 0), {{data, 512, true}})).status, VIRTIO_BLK_S_OK);
}

TEST_F(BlockRequestTest, Flush) {
  ParsedBlockRequest request = Parse(Chain(Header(VIRTIO_BLK_T_FLUSH, 0)));
  EXPECT_EQ(request.status, VIRTIO_BLK_S_OK);
  EXPECT_EQ(request.type, BlockRequestType::kFlush);
  EXPECT_EQ(request.used_length_ok, 1u);
}

TEST_F(BlockRequestTest, GetId) {
  const uint64_t id = ring_.Allocate(kBlockIdBytes);
  ParsedBlockRequest request =
      Parse(Chain(Header(VIRTIO_BLK_T_GET_ID, 0), {{id, kBlockIdBytes, true}}));
  EXPECT_EQ(request.status, VIRTIO_BLK_S_OK);
  EXPECT_EQ(request.type, BlockRequestType::kGetId);
  EXPECT_EQ(request.data_bytes, kBlockIdBytes);
  EXPECT_EQ(request.used_length_ok, kBlockIdBytes + 1);

  // A longer buffer gets 20 bytes, and the status is not contiguous with them.
  const uint64_t longer = ring_.Allocate(64);
  request = Parse(Chain(Header(VIRTIO_BLK_T_GET_ID, 0), {{longer, 64, true}}));
  EXPECT_EQ(request.data_bytes, kBlockIdBytes);
  EXPECT_EQ(request.used_length_ok, kBlockIdBytes);
}

TEST_F(BlockRequestTest, UnknownTypesAreUnsupported) {
  for (uint32_t type : {2u, 3u, 5u, 10u, 14u, 0x80000000u}) {
    ParsedBlockRequest request = Parse(Chain(Header(type, 0)));
    EXPECT_EQ(request.status, VIRTIO_BLK_S_UNSUPP) << "type " << type;
    EXPECT_EQ(request.status_address, status_);
  }
}

TEST_F(BlockRequestTest, Discard) {
  const uint64_t segments = Segments({{8, 16, 0}, {2040, 8, 0}});
  ParsedBlockRequest request =
      Parse(Chain(Header(VIRTIO_BLK_T_DISCARD, 0), {{segments, 32, false}}));
  EXPECT_EQ(request.status, VIRTIO_BLK_S_OK) << request.error;
  EXPECT_EQ(request.type, BlockRequestType::kDiscard);
  ASSERT_EQ(request.ranges.size(), 2u);
  EXPECT_EQ(request.ranges[0], (BlockRange{8, 16, false}));
  EXPECT_EQ(request.ranges[1], (BlockRange{2040, 8, false}));
}

TEST_F(BlockRequestTest, DiscardErrors) {
  auto parse = [&](const std::vector<virtio_blk_discard_write_zeroes>& segments) {
    const uint64_t address = Segments(segments);
    const uint32_t bytes = static_cast<uint32_t>(segments.size() * 16);
    return Parse(Chain(Header(VIRTIO_BLK_T_DISCARD, 0), {{address, bytes, false}})).status;
  };
  EXPECT_EQ(parse({{0, 8, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP}}), VIRTIO_BLK_S_UNSUPP);
  EXPECT_EQ(parse({{0, 8, 0x4}}), VIRTIO_BLK_S_UNSUPP);
  EXPECT_EQ(parse({{0, 1025, 0}}), VIRTIO_BLK_S_IOERR);
  EXPECT_EQ(parse({{2040, 9, 0}}), VIRTIO_BLK_S_IOERR);
  EXPECT_EQ(parse({{~uint64_t{0}, 1, 0}}), VIRTIO_BLK_S_IOERR);
  EXPECT_EQ(parse({{0, 1, 0}, {1, 1, 0}, {2, 1, 0}, {3, 1, 0}, {4, 1, 0}}), VIRTIO_BLK_S_IOERR);
  EXPECT_EQ(parse({}), VIRTIO_BLK_S_IOERR);

  const uint64_t partial = Segments({{0, 8, 0}});
  EXPECT_EQ(Parse(Chain(Header(VIRTIO_BLK_T_DISCARD, 0), {{partial, 12, false}})).status,
            VIRTIO_BLK_S_IOERR);

  limits_.discard = false;
  EXPECT_EQ(parse({{0, 8, 0}}), VIRTIO_BLK_S_UNSUPP);
  limits_.discard = true;
  limits_.read_only = true;
  EXPECT_EQ(parse({{0, 8, 0}}), VIRTIO_BLK_S_IOERR);
}

TEST_F(BlockRequestTest, WriteZeroes) {
  const uint64_t segments = Segments({{100, 50, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP}});
  ParsedBlockRequest request =
      Parse(Chain(Header(VIRTIO_BLK_T_WRITE_ZEROES, 0), {{segments, 16, false}}));
  EXPECT_EQ(request.status, VIRTIO_BLK_S_OK) << request.error;
  EXPECT_EQ(request.type, BlockRequestType::kWriteZeroes);
  ASSERT_EQ(request.ranges.size(), 1u);
  EXPECT_EQ(request.ranges[0], (BlockRange{100, 50, true}));

  const uint64_t reserved = Segments({{100, 50, 0x2}});
  EXPECT_EQ(Parse(Chain(Header(VIRTIO_BLK_T_WRITE_ZEROES, 0), {{reserved, 16, false}})).status,
            VIRTIO_BLK_S_UNSUPP);
  const uint64_t two = Segments({{0, 1, 0}, {1, 1, 0}});
  EXPECT_EQ(Parse(Chain(Header(VIRTIO_BLK_T_WRITE_ZEROES, 0), {{two, 32, false}})).status,
            VIRTIO_BLK_S_IOERR);
  limits_.write_zeroes = false;
  EXPECT_EQ(Parse(Chain(Header(VIRTIO_BLK_T_WRITE_ZEROES, 0), {{segments, 16, false}})).status,
            VIRTIO_BLK_S_UNSUPP);
}

TEST_F(BlockRequestTest, MissingStatusByte) {
  DescriptorChain chain;
  chain.buffers = {{Header(VIRTIO_BLK_T_FLUSH, 0), 16, false}};
  chain.complete = true;
  ParsedBlockRequest request = Parse(chain);
  EXPECT_EQ(request.status, VIRTIO_BLK_S_IOERR);
  EXPECT_FALSE(request.status_address);

  chain.buffers.push_back({ring_.Allocate(1), 0, true});
  EXPECT_FALSE(Parse(chain).status_address);
}

TEST_F(BlockRequestTest, ShortHeader) {
  DescriptorChain chain = Chain(Header(VIRTIO_BLK_T_IN, 0));
  chain.buffers[0].length = 12;
  ParsedBlockRequest request = Parse(chain);
  EXPECT_EQ(request.status, VIRTIO_BLK_S_IOERR);
  EXPECT_EQ(request.status_address, status_);
}

TEST_F(BlockRequestTest, MalformedChainGetsIoErrorWhereStatusIsKnown) {
  DescriptorChain chain = Chain(Header(VIRTIO_BLK_T_IN, 0));
  chain.error = ChainError::kBufferOutsideRam;
  ParsedBlockRequest request = Parse(chain);
  EXPECT_EQ(request.status, VIRTIO_BLK_S_IOERR);
  EXPECT_EQ(request.status_address, status_);
  EXPECT_EQ(request.used_length_error, 0u);

  chain.error = ChainError::kTooLong;
  chain.complete = false;
  request = Parse(chain);
  EXPECT_EQ(request.status, VIRTIO_BLK_S_IOERR);
  EXPECT_FALSE(request.status_address);
}

}  // namespace
}  // namespace forkvmm::devices::virtio
