// Tests of the fork command's argument parsing; fork itself is tested with
// real VMs in tests/integration/fork_test.cc.
#include <gtest/gtest.h>

#include "vmm/vm_process.h"

namespace forkvmm {
namespace {

using nlohmann::json;

TEST(ParseForkRequest, DefaultsWithoutArguments) {
  auto request = ParseForkRequest(json::object());
  ASSERT_TRUE(request.ok()) << request.error().message();
  EXPECT_EQ(request->count, 1u);
  EXPECT_FALSE(request->paused);
  EXPECT_EQ(request->name, "");
  EXPECT_EQ(request->serial_log, "");
}

// The parser stores a non-negative integer in JSON text as unsigned, and
// a json object built in C++ from an int stores it as signed.
TEST(ParseForkRequest, AcceptsSignedAndUnsignedCounts) {
  auto parsed = ParseForkRequest(json::parse(R"({"count": 3})"));
  ASSERT_TRUE(parsed.ok()) << parsed.error().message();
  EXPECT_EQ(parsed->count, 3u);
  auto built = ParseForkRequest(json{{"count", 3}});
  ASSERT_TRUE(built.ok()) << built.error().message();
  EXPECT_EQ(built->count, 3u);
}

TEST(ParseForkRequest, AllArguments) {
  auto request = ParseForkRequest(
      json{{"count", 256}, {"paused", true}, {"name", "kid"}, {"serial_log", "/tmp/{id}.log"}});
  ASSERT_TRUE(request.ok()) << request.error().message();
  EXPECT_EQ(request->count, 256u);
  EXPECT_TRUE(request->paused);
  EXPECT_EQ(request->name, "kid");
  EXPECT_EQ(request->serial_log, "/tmp/{id}.log");
}

TEST(ParseForkRequest, RejectsCountsOutsideTheRange) {
  const std::pair<const char*, const char*> kCases[] = {
      {R"({"count": 0})", "invalid fork count 0: expected an integer from 1 to 256"},
      {R"({"count": 257})", "invalid fork count 257: expected an integer from 1 to 256"},
      {R"({"count": -1})", "invalid fork count -1: expected an integer from 1 to 256"},
      {R"({"count": 2.5})", "invalid fork count 2.5: expected an integer from 1 to 256"},
      // Beyond int64_t and uint64_t: the parser stores both as floats.
      {R"({"count": 1e30})", "invalid fork count 1e+30: expected an integer from 1 to 256"},
      {R"({"count": 99999999999999999999})",
       "invalid fork count 1e+20: expected an integer from 1 to 256"},
      {R"({"count": 18446744073709551615})",
       "invalid fork count 18446744073709551615: expected an integer from 1 to 256"},
      {R"({"count": "2"})", "invalid fork count \"2\": expected an integer from 1 to 256"},
      {R"({"count": null})", "invalid fork count null: expected an integer from 1 to 256"},
  };
  for (const auto& [text, expected] : kCases) {
    SCOPED_TRACE(text);
    auto request = ParseForkRequest(json::parse(text));
    ASSERT_FALSE(request.ok());
    EXPECT_EQ(request.error().message(), expected);
  }
}

TEST(ParseForkRequest, RejectsArgumentsOfTheWrongType) {
  const std::pair<const char*, const char*> kCases[] = {
      {R"({"paused": "yes"})", "invalid fork argument paused \"yes\": expected true or false"},
      {R"({"paused": 1})", "invalid fork argument paused 1: expected true or false"},
      {R"({"name": 7})", "invalid fork argument name 7: expected a string"},
      {R"({"serial_log": ["a"]})", "invalid fork argument serial_log [\"a\"]: expected a string"},
      {R"([1])", "invalid fork arguments: expected a JSON object"},
  };
  for (const auto& [text, expected] : kCases) {
    SCOPED_TRACE(text);
    auto request = ParseForkRequest(json::parse(text));
    ASSERT_FALSE(request.ok());
    EXPECT_EQ(request.error().message(), expected);
  }
}

}  // namespace
}  // namespace forkvmm
