#include "vmm/host.h"

#include <unistd.h>

#include <filesystem>
#include <string>

#include <gtest/gtest.h>

namespace forkvmm {
namespace {

// A stand-in for /sys/module holding one directory per named module.
class HostDetectionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    directory_ = std::filesystem::temp_directory_path() /
                 ("forkvmm-host-test-" + std::to_string(getpid()));
    std::filesystem::create_directories(directory_);
  }
  void TearDown() override { std::filesystem::remove_all(directory_); }

  void LoadModule(const std::string& name) {
    std::filesystem::create_directories(directory_ / name);
  }
  HostProfile Detect() const { return DetectHost(directory_.string()); }

  std::filesystem::path directory_;
};

TEST_F(HostDetectionTest, IntelIsHardware) {
  LoadModule("kvm");
  LoadModule("kvm_intel");
  HostProfile profile = Detect();
  EXPECT_EQ(profile.virtualization, Virtualization::kHardware);
  EXPECT_EQ(profile.kvm_module, "kvm_intel");
  EXPECT_TRUE(profile.hidden_features.empty());
  EXPECT_EQ(profile.hidden_kvm_features, 0u);
  EXPECT_EQ(profile.extra_kernel_parameters, "");
  EXPECT_FALSE(profile.step_over_failed_fwait);
}

TEST_F(HostDetectionTest, AmdIsHardware) {
  LoadModule("kvm_amd");
  HostProfile profile = Detect();
  EXPECT_EQ(profile.virtualization, Virtualization::kHardware);
  EXPECT_EQ(profile.kvm_module, "kvm_amd");
}

TEST_F(HostDetectionTest, PvmGetsQuirksProfile) {
  LoadModule("kvm");
  LoadModule("kvm_pvm");
  HostProfile profile = Detect();
  EXPECT_EQ(profile.virtualization, Virtualization::kSoftware);
  EXPECT_EQ(profile.kvm_module, "kvm_pvm");
  EXPECT_FALSE(profile.hidden_features.empty());
  EXPECT_NE(profile.hidden_kvm_features, 0u);
  EXPECT_TRUE(profile.step_over_failed_fwait);
  // LFENCE_RDTSC is Linux capability 3*32+18 = 114 and always cleared.
  EXPECT_EQ(profile.extra_kernel_parameters.rfind("noxsave clearcpuid=114,", 0), 0u)
      << profile.extra_kernel_parameters;
  EXPECT_NE(profile.extra_kernel_parameters.find(" highres=off "), std::string::npos);
  EXPECT_NE(profile.Describe().find("kvm_pvm"), std::string::npos);
}

TEST_F(HostDetectionTest, NoModuleIsUnknown) {
  HostProfile profile = Detect();
  EXPECT_EQ(profile.virtualization, Virtualization::kUnknown);
  EXPECT_EQ(profile.kvm_module, "");
  EXPECT_FALSE(profile.step_over_failed_fwait);
  EXPECT_NE(profile.Describe().find("unknown"), std::string::npos);
}

}  // namespace
}  // namespace forkvmm
