#include "vmm/console.h"

#include <gtest/gtest.h>

namespace forkvmm {
namespace {

std::string Filter(ConsoleEscape& escape, const std::string& input, bool* quit) {
  return escape.Filter({reinterpret_cast<const uint8_t*>(input.data()), input.size()}, quit);
}

TEST(ConsoleEscape, PlainBytesPassThrough) {
  ConsoleEscape escape;
  bool quit = true;
  EXPECT_EQ(Filter(escape, "ls\r\x03", &quit), "ls\r\x03");
  EXPECT_FALSE(quit);
}

TEST(ConsoleEscape, CtrlAXQuits) {
  ConsoleEscape escape;
  bool quit = false;
  EXPECT_EQ(Filter(escape, "ab\x01x", &quit), "ab");
  EXPECT_TRUE(quit);
}

TEST(ConsoleEscape, SequenceSplitAcrossReads) {
  ConsoleEscape escape;
  bool quit = false;
  EXPECT_EQ(Filter(escape, "a\x01", &quit), "a");
  EXPECT_FALSE(quit);
  EXPECT_EQ(Filter(escape, "x", &quit), "");
  EXPECT_TRUE(quit);
}

TEST(ConsoleEscape, DoubleCtrlASendsOne) {
  ConsoleEscape escape;
  bool quit = false;
  EXPECT_EQ(Filter(escape, "\x01\x01z", &quit), "\x01z");
  EXPECT_FALSE(quit);
}

TEST(ConsoleEscape, CtrlAOtherKeyForwardsBoth) {
  ConsoleEscape escape;
  bool quit = false;
  EXPECT_EQ(Filter(escape, "\x01q", &quit), "\x01q");
  EXPECT_FALSE(quit);
}

}  // namespace
}  // namespace forkvmm
