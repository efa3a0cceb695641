// The `forkvmm img` command line: options, size suffixes, messages and exit codes.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "devices/block/test_support.h"
#include "tests/img/img_test_util.h"

namespace forkvmm::block {
namespace {

using testing::ForkvmmImg;
using testing::RunProcess;
using testing::TempDir;

nlohmann::json Info(const std::string& path) {
  testing::ProcessResult info = RunProcess({ForkvmmImg(), "img", "info", "--json", path});
  EXPECT_EQ(info.exit_code, 0) << info.err;
  return nlohmann::json::parse(info.out, nullptr, /*allow_exceptions=*/false);
}

TEST(ImgCliTest, CreateAcceptsSizeSuffixes) {
  TempDir dir;
  const std::pair<const char*, uint64_t> sizes[] = {
      {"4096", 4096}, {"64K", 64 << 10}, {"3M", 3 << 20}, {"2G", 2ull << 30}, {"1T", 1ull << 40}};
  for (const auto& [text, bytes] : sizes) {
    std::string path = dir.File(std::string("a-") + text + ".qcow2");
    testing::ProcessResult made = RunProcess({ForkvmmImg(), "img", "create", "-q", path, text});
    ASSERT_EQ(made.exit_code, 0) << made.err;
    EXPECT_EQ(Info(path)["virtual-size"], bytes) << text;
  }
}

TEST(ImgCliTest, CreateOptions) {
  TempDir dir;
  const std::string path = dir.File("a.qcow2");
  testing::ProcessResult made = RunProcess(
      {ForkvmmImg(), "img", "create", "-q", "-o", "compat=0.10", "--cluster-size", "4K", path, "1M"});
  ASSERT_EQ(made.exit_code, 0) << made.err;
  nlohmann::json info = Info(path);
  EXPECT_EQ(info["cluster-size"], 4096);
  EXPECT_EQ(info["format-specific"]["data"]["compat"], "0.10");

  const std::string v3 = dir.File("v3.qcow2");
  made = RunProcess({ForkvmmImg(), "img", "create", "-q", "-o",
                     "cluster_size=512,refcount_bits=4,lazy_refcounts=on",
                     "-o", "compression_type=zstd", v3, "1M"});
  ASSERT_EQ(made.exit_code, 0) << made.err;
  info = Info(v3);
  EXPECT_EQ(info["cluster-size"], 512);
  EXPECT_EQ(info["format-specific"]["data"]["refcount-bits"], 4);
  EXPECT_EQ(info["format-specific"]["data"]["lazy-refcounts"], true);
  EXPECT_EQ(info["format-specific"]["data"]["compression-type"], "zstd");
}

TEST(ImgCliTest, CreateErrorsNameTheFile) {
  TempDir dir;
  const std::string path = dir.File("a.qcow2");
  struct Case {
    std::vector<std::string> args;
    std::string message;
  };
  const Case cases[] = {
      {{"-o", "colour=blue", path, "1M"},
       path + ": unknown option 'colour' for -o (supported: cluster_size, compat, refcount_bits, "
              "lazy_refcounts, compression_type, backing_file, backing_fmt, preallocation)"},
      {{"--cluster-size", "3000", path, "1M"},
       path + ": invalid cluster size 3000 (must be a power of two from 512 B to 2 MiB)"},
      {{"-o", "refcount_bits=3", path, "1M"},
       path + ": invalid refcount width 3 (must be 1, 2, 4, 8, 16, 32 or 64 bits)"},
      {{path}, path + ": a size is needed for an image without a backing file"},
      {{"-b", "base.qcow2", path},
       path + ": a backing file needs its format (raw or qcow2); forkvmm records it and never "
              "guesses it"},
  };
  for (const Case& c : cases) {
    std::vector<std::string> argv = {ForkvmmImg(), "img", "create"};
    argv.insert(argv.end(), c.args.begin(), c.args.end());
    testing::ProcessResult made = RunProcess(argv);
    EXPECT_EQ(made.exit_code, 1) << c.message;
    EXPECT_EQ(made.err, "forkvmm: " + c.message + "\n");
  }
}

TEST(ImgCliTest, RawImages) {
  TempDir dir;
  const std::string path = dir.File("disk.raw");
  ASSERT_EQ(RunProcess({ForkvmmImg(), "img", "create", "-q", "-f", "raw", path, "10M"}).exit_code,
            0);
  nlohmann::json info = Info(path);
  EXPECT_EQ(info["format"], "raw");
  EXPECT_EQ(info["virtual-size"], 10 << 20);
  testing::ProcessResult check = RunProcess({ForkvmmImg(), "img", "check", path});
  EXPECT_EQ(check.exit_code, 63);
  EXPECT_EQ(check.err, "forkvmm: " + path + ": raw images have no metadata to check\n");
}

TEST(ImgCliTest, CheckJsonReportsCounts) {
  TempDir dir;
  const std::string path = dir.File("a.qcow2");
  ASSERT_EQ(RunProcess({ForkvmmImg(), "img", "create", "-q", path, "1M"}).exit_code, 0);
  testing::ProcessResult check = RunProcess({ForkvmmImg(), "img", "check", "--output=json", path});
  ASSERT_EQ(check.exit_code, 0) << check.err;
  nlohmann::json report = nlohmann::json::parse(check.out);
  EXPECT_EQ(report["filename"], path);
  EXPECT_EQ(report["total-clusters"], 16);
  EXPECT_EQ(report["allocated-clusters"], 0);
  EXPECT_EQ(report["check-errors"], 0);
  EXPECT_FALSE(report.contains("corruptions"));
}

TEST(ImgCliTest, RebaseRecordsFormatOnlyWhenGiven) {
  TempDir dir;
  ASSERT_EQ(RunProcess({ForkvmmImg(), "img", "create", "-q", dir.File("base.qcow2"), "1M"})
                .exit_code,
            0);
  ASSERT_EQ(RunProcess({ForkvmmImg(), "img", "create", "-q", dir.File("top.qcow2"), "1M"})
                .exit_code,
            0);
  testing::ProcessResult missing =
      RunProcess({ForkvmmImg(), "img", "rebase", "-b", "base.qcow2", dir.File("top.qcow2")});
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_EQ(missing.err, "forkvmm: " + dir.File("top.qcow2") +
                             ": a backing file needs its format (raw or qcow2); forkvmm records "
                             "it and never guesses it\n");
  ASSERT_EQ(RunProcess({ForkvmmImg(), "img", "rebase", "-u", "-b", "base.qcow2", "-F", "qcow2",
                        dir.File("top.qcow2")})
                .exit_code,
            0);
  nlohmann::json info = Info(dir.File("top.qcow2"));
  EXPECT_EQ(info["backing-filename"], "base.qcow2");
  EXPECT_EQ(info["backing-filename-format"], "qcow2");
}

}  // namespace
}  // namespace forkvmm::block
