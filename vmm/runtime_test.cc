#include "vmm/runtime.h"

#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace forkvmm {
namespace {

namespace fs = std::filesystem;

// A temporary directory for the runtime root, removed at the end.
class RuntimeDirectoryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char pattern[] = "/tmp/forkvmm-runtime-test.XXXXXX";
    ASSERT_NE(mkdtemp(pattern), nullptr);
    base_ = pattern;
  }
  void TearDown() override {
    std::error_code ignored;
    fs::remove_all(base_, ignored);
  }

  static void WriteFile(const std::string& path, const std::string& text) {
    std::ofstream out(path, std::ios::trunc);
    out << text;
    ASSERT_TRUE(out.good()) << path;
  }

  // Moves the modification time of `path` an hour back, past the age at
  // which List() treats a directory without a record as debris.
  static void MakeOld(const std::string& path) {
    fs::last_write_time(path, fs::file_time_type::clock::now() - std::chrono::hours(1));
  }

  VmRecord LiveRecord(const std::string& id, const std::string& name = "") const {
    VmRecord record;
    record.id = id;
    record.name = name;
    record.pid = getpid();
    return record;
  }

  std::string base_;
};

TEST_F(RuntimeDirectoryTest, OpenCreatesPrivateRoot) {
  std::string root = base_ + "/new/runtime";
  auto runtime = RuntimeDirectory::Open(root);
  ASSERT_TRUE(runtime.ok()) << runtime.error().message();
  struct stat st {};
  ASSERT_EQ(stat(root.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0700u);
}

TEST_F(RuntimeDirectoryTest, OpenKeepsModeOfExistingRoot) {
  ASSERT_EQ(chmod(base_.c_str(), 0755), 0);
  auto runtime = RuntimeDirectory::Open(base_);
  ASSERT_TRUE(runtime.ok()) << runtime.error().message();
  struct stat st {};
  ASSERT_EQ(stat(base_.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0755u);
}

// A user may point the runtime root at a directory with other files in it:
// List() must leave everything it did not create alone.
TEST_F(RuntimeDirectoryTest, ListLeavesForeignEntries) {
  ASSERT_TRUE(fs::create_directories(base_ + "/src"));
  WriteFile(base_ + "/src/main.c", "int main() {}\n");
  MakeOld(base_ + "/src");
  // Named like a VM id, without a record, old, with a file forkvmm did not
  // create in it.
  const std::string lookalike = base_ + "/0123456789ab";
  ASSERT_TRUE(fs::create_directories(lookalike));
  WriteFile(lookalike + "/notes.txt", "mine\n");
  WriteFile(lookalike + "/serial.log", "old output\n");
  MakeOld(lookalike);

  auto runtime = RuntimeDirectory::Open(base_);
  ASSERT_TRUE(runtime.ok()) << runtime.error().message();
  EXPECT_TRUE(runtime->List().empty());

  EXPECT_TRUE(fs::exists(base_ + "/src/main.c"));
  EXPECT_TRUE(fs::exists(lookalike + "/notes.txt"));
  EXPECT_FALSE(fs::exists(lookalike + "/serial.log")) << "forkvmm's own debris stays";
}

TEST_F(RuntimeDirectoryTest, ListRemovesOldDebris) {
  const std::string debris = base_ + "/0123456789ab";
  ASSERT_TRUE(fs::create_directories(debris));
  WriteFile(debris + "/vm.json.tmp", "{");
  MakeOld(debris);
  auto runtime = RuntimeDirectory::Open(base_);
  ASSERT_TRUE(runtime.ok()) << runtime.error().message();
  EXPECT_TRUE(runtime->List().empty());
  EXPECT_FALSE(fs::exists(debris));
}

TEST_F(RuntimeDirectoryTest, ListKeepsLiveVm) {
  auto runtime = RuntimeDirectory::Open(base_);
  ASSERT_TRUE(runtime.ok()) << runtime.error().message();
  ASSERT_TRUE(runtime->CreateVm(LiveRecord("00000000000a", "web-1")).ok());
  std::vector<VmRecord> records = runtime->List();
  ASSERT_EQ(records.size(), 1u);
  EXPECT_EQ(records[0].id, "00000000000a");
  EXPECT_EQ(records[0].name, "web-1");
  EXPECT_EQ(records[0].pid, getpid());
  EXPECT_EQ(records[0].pid_start_ticks, ProcessStartTicks(getpid()));
  EXPECT_NE(records[0].pid_start_ticks, 0u);
}

// A VM that died without cleaning up leaves a record whose pid another
// process may have by now: that process is not the VM.
TEST_F(RuntimeDirectoryTest, ListRemovesRecordOfReusedPid) {
  const std::string directory = base_ + "/00000000000b";
  ASSERT_TRUE(fs::create_directories(directory));
  uint64_t wrong_ticks = ProcessStartTicks(getpid()) + 1;
  WriteFile(directory + "/vm.json", "{\"id\": \"00000000000b\", \"pid\": " +
                                        std::to_string(getpid()) +
                                        ", \"pid_start_ticks\": " + std::to_string(wrong_ticks) +
                                        "}");
  auto runtime = RuntimeDirectory::Open(base_);
  ASSERT_TRUE(runtime.ok()) << runtime.error().message();
  EXPECT_TRUE(runtime->List().empty());
  EXPECT_FALSE(fs::exists(directory));
  EXPECT_FALSE(runtime->Find("00000000000b").ok());
}

TEST_F(RuntimeDirectoryTest, CreateVmRejectsInvalidName) {
  auto runtime = RuntimeDirectory::Open(base_);
  ASSERT_TRUE(runtime.ok()) << runtime.error().message();
  Status created = runtime->CreateVm(LiveRecord("00000000000c", "a/b"));
  ASSERT_FALSE(created.ok());
  EXPECT_NE(created.error().message().find("invalid VM name 'a/b'"), std::string::npos)
      << created.error().message();
  EXPECT_FALSE(fs::exists(base_ + "/00000000000c"));
}

TEST(VmNameTest, Validation) {
  const std::vector<std::string> valid = {"a", "web-1", "Base.v2", "x_y", "0day",
                                          std::string(64, 'n')};
  for (const std::string& name : valid) {
    EXPECT_TRUE(ValidateVmName(name).ok()) << name;
  }
  const std::vector<std::string> invalid = {
      "", std::string(65, 'n'), "-x", ".hidden", "a/b", "two words", "line\nbreak",
      "0123456789ab", "caf\xc3\xa9"};
  for (const std::string& name : invalid) {
    EXPECT_FALSE(ValidateVmName(name).ok()) << name;
  }
}

TEST(VmIdTest, Form) {
  EXPECT_TRUE(IsVmId("0123456789ab"));
  EXPECT_FALSE(IsVmId("0123456789AB"));
  EXPECT_FALSE(IsVmId("0123456789a"));
  EXPECT_FALSE(IsVmId("0123456789abc"));
  EXPECT_FALSE(IsVmId("src"));
  EXPECT_FALSE(IsVmId("../../etc/xx"));
}

TEST(ProcessTest, StartTicksIdentifyProcess) {
  uint64_t ticks = ProcessStartTicks(getpid());
  ASSERT_NE(ticks, 0u);
  EXPECT_EQ(ProcessStartTicks(getpid()), ticks);
  EXPECT_TRUE(ProcessAlive(getpid()));
  EXPECT_TRUE(ProcessAlive(getpid(), ticks));
  EXPECT_FALSE(ProcessAlive(getpid(), ticks + 1));
  EXPECT_FALSE(ProcessAlive(0));
  EXPECT_EQ(ProcessStartTicks(-1), 0u);
}

}  // namespace
}  // namespace forkvmm
