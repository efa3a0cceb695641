#include <gtest/gtest.h>

#include "vmm/base/result.h"
#include "vmm/base/units.h"

namespace forkvmm {
namespace {

TEST(ParseSize, Suffixes) {
  EXPECT_EQ(*ParseSize("512M"), 512ull << 20);
  EXPECT_EQ(*ParseSize("2G"), 2ull << 30);
  EXPECT_EQ(*ParseSize("2GiB"), 2ull << 30);
  EXPECT_EQ(*ParseSize("64k"), 64ull << 10);
  EXPECT_EQ(*ParseSize("1T"), 1ull << 40);
  EXPECT_EQ(*ParseSize("4096B"), 4096u);
}

TEST(ParseSize, DefaultUnitAppliesWithoutSuffix) {
  EXPECT_EQ(*ParseSize("512", 1 << 20), 512ull << 20);
  EXPECT_EQ(*ParseSize("512"), 512u);
}

TEST(ParseSize, JunkIsRejected) {
  for (const char* text : {"", "M", "12Q", "-5", "1.5G", "12 M", "0x10"}) {
    auto size = ParseSize(text);
    EXPECT_FALSE(size.ok()) << text;
  }
  EXPECT_EQ(ParseSize("12Q").error().message(),
            "invalid size '12Q': expected a number with an optional K, M, G or T suffix");
}

TEST(ParseSize, OverflowIsRejected) {
  EXPECT_FALSE(ParseSize("99999999999999999999").ok());
  auto size = ParseSize("17179869184G");
  ASSERT_FALSE(size.ok());
  EXPECT_EQ(size.error().message(), "size '17179869184G' is too large");
}

Result<int> Half(int value) {
  if (value % 2 != 0) return Error("odd value");
  return value / 2;
}

Result<int> Quarter(int value) {
  ASSIGN_OR_RETURN_CTX(int half, Half(value), "first halving");
  ASSIGN_OR_RETURN_CTX(int quarter, Half(half), "second halving");
  return quarter;
}

TEST(Result, ContextChainsOutward) {
  EXPECT_EQ(*Quarter(8), 2);
  auto failed = Quarter(6);
  ASSERT_FALSE(failed.ok());
  EXPECT_EQ(failed.error().message(), "second halving: odd value");
}

TEST(Error, FromErrnoNamesOperationAndContext) {
  Error error = Error::FromErrno("open", "/x", ENOENT);
  EXPECT_EQ(error.message(), "open /x: No such file or directory");
  EXPECT_EQ(error.errnum(), ENOENT);
}

}  // namespace
}  // namespace forkvmm
