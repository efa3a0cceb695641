#include "vmm/boot/kernel_loader.h"

#include <elf.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <optional>
#include <fstream>
#include <vector>

namespace forkvmm::boot {
namespace {

using memory::kMiB;

class KernelLoaderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char pattern[] = "/tmp/forkvmm-loader-XXXXXX";
    ASSERT_NE(mkdtemp(pattern), nullptr);
    directory_ = pattern;
    auto memory = memory::GuestMemory::Create({.ram_bytes = 64 * kMiB});
    ASSERT_TRUE(memory.ok());
    memory_.emplace(std::move(memory).value());
  }
  void TearDown() override { std::filesystem::remove_all(directory_); }

  std::string WriteFile(const std::string& name, const std::vector<uint8_t>& bytes) {
    std::string path = directory_ + "/" + name;
    std::ofstream out(path, std::ios::binary);
    out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
    return path;
  }

  // An ELF executable with one PT_LOAD segment of `code` at `address` and
  // `bss` extra zero bytes.
  static std::vector<uint8_t> MakeElf(uint64_t address, const std::vector<uint8_t>& code,
                                      uint64_t entry, uint64_t bss = 0) {
    Elf64_Ehdr ehdr{};
    std::memcpy(ehdr.e_ident, ELFMAG, SELFMAG);
    ehdr.e_ident[EI_CLASS] = ELFCLASS64;
    ehdr.e_ident[EI_DATA] = ELFDATA2LSB;
    ehdr.e_ident[EI_VERSION] = EV_CURRENT;
    ehdr.e_type = ET_EXEC;
    ehdr.e_machine = EM_X86_64;
    ehdr.e_version = EV_CURRENT;
    ehdr.e_entry = entry;
    ehdr.e_phoff = sizeof(Elf64_Ehdr);
    ehdr.e_ehsize = sizeof(Elf64_Ehdr);
    ehdr.e_phentsize = sizeof(Elf64_Phdr);
    ehdr.e_phnum = 1;
    Elf64_Phdr phdr{};
    phdr.p_type = PT_LOAD;
    phdr.p_offset = 0x1000;
    phdr.p_paddr = phdr.p_vaddr = address;
    phdr.p_filesz = code.size();
    phdr.p_memsz = code.size() + bss;
    std::vector<uint8_t> file(0x1000 + code.size());
    std::memcpy(file.data(), &ehdr, sizeof(ehdr));
    std::memcpy(file.data() + sizeof(ehdr), &phdr, sizeof(phdr));
    std::memcpy(file.data() + 0x1000, code.data(), code.size());
    return file;
  }

  std::string directory_;
  std::optional<memory::GuestMemory> memory_;
};

TEST_F(KernelLoaderTest, ElfSegmentLoadsAtPhysicalAddress) {
  std::vector<uint8_t> code = {0xf4, 0x90, 0x90, 0xcc};
  // Dirty the bss area so the test sees the loader zero it.
  ASSERT_TRUE(memory_->WriteObject<uint32_t>(0x200004, 0xffffffff).ok());
  std::string path = WriteFile("k.elf", MakeElf(0x200000, code, 0x200000, 0x100));
  auto kernel = LoadKernel(path, *memory_);
  ASSERT_TRUE(kernel.ok()) << kernel.error().message();
  EXPECT_EQ(kernel->format, KernelFormat::kElf);
  EXPECT_EQ(kernel->entry, 0x200000u);
  EXPECT_EQ(kernel->end, 0x200104u);
  uint8_t loaded[4];
  ASSERT_TRUE(memory_->Read(0x200000, loaded, 4).ok());
  EXPECT_EQ(std::vector<uint8_t>(loaded, loaded + 4), code);
  EXPECT_EQ(*memory_->ReadObject<uint32_t>(0x200004), 0u);
  EXPECT_EQ(kernel->header.header, 0x53726448u);
}

TEST_F(KernelLoaderTest, ElfSegmentPastRamIsRejected) {
  std::string path = WriteFile("big.elf", MakeElf(64 * kMiB - 2, {1, 2, 3, 4}, 64 * kMiB - 2));
  auto kernel = LoadKernel(path, *memory_);
  ASSERT_FALSE(kernel.ok());
  EXPECT_EQ(kernel.error().message(),
            path + ": ELF segment at 0x3fffffe+0x4 does not fit in guest RAM (64 MiB)");
}

TEST_F(KernelLoaderTest, ElfSegmentOverBootAreaIsRejected) {
  std::string path = WriteFile("low.elf", MakeElf(0x7000, {1}, 0x7000));
  auto kernel = LoadKernel(path, *memory_);
  ASSERT_FALSE(kernel.ok());
  EXPECT_EQ(kernel.error().message(),
            path + ": ELF segment at 0x7000 overlaps the boot structures below 0xa0000");
}

TEST_F(KernelLoaderTest, ElfEntryOutsideSegmentsIsRejected) {
  std::string path = WriteFile("entry.elf", MakeElf(0x200000, {1, 2}, 0x300000));
  auto kernel = LoadKernel(path, *memory_);
  ASSERT_FALSE(kernel.ok());
  EXPECT_EQ(kernel.error().message(),
            path + ": ELF entry point 0x300000 is not inside a loaded segment");
}

TEST_F(KernelLoaderTest, TruncatedElfIsRejected) {
  auto bytes = MakeElf(0x200000, std::vector<uint8_t>(64, 0x90), 0x200000);
  bytes.resize(0x1000 + 10);
  std::string path = WriteFile("trunc.elf", bytes);
  auto kernel = LoadKernel(path, *memory_);
  ASSERT_FALSE(kernel.ok());
  EXPECT_EQ(kernel.error().message(),
            path + ": file is truncated: 64 bytes at offset 0x1000 extend past its end (4106 "
                   "bytes)");
}

TEST_F(KernelLoaderTest, ElfForOtherMachineIsRejected) {
  auto bytes = MakeElf(0x200000, {1}, 0x200000);
  bytes[EI_CLASS] = ELFCLASS32;
  std::string path = WriteFile("arm.elf", bytes);
  auto kernel = LoadKernel(path, *memory_);
  ASSERT_FALSE(kernel.ok());
  EXPECT_EQ(kernel.error().message(), path + ": ELF file is not a 64-bit x86 executable");
}

TEST_F(KernelLoaderTest, TextFileIsNotAKernel) {
  std::string text = "#!/bin/sh\necho this is not a kernel\n";
  std::string path = WriteFile("script", std::vector<uint8_t>(text.begin(), text.end()));
  auto kernel = LoadKernel(path, *memory_);
  ASSERT_FALSE(kernel.ok());
  EXPECT_EQ(kernel.error().message(),
            path + ": not a Linux kernel: neither an ELF file nor a bzImage");
}

TEST_F(KernelLoaderTest, EmptyFileIsNotAKernel) {
  std::string path = WriteFile("empty", {});
  EXPECT_FALSE(LoadKernel(path, *memory_).ok());
}

TEST_F(KernelLoaderTest, MissingFileNamesPath) {
  auto kernel = LoadKernel(directory_ + "/missing", *memory_);
  ASSERT_FALSE(kernel.ok());
  EXPECT_EQ(kernel.error().message(),
            "open " + directory_ + "/missing: No such file or directory");
}

std::vector<uint8_t> MakeBzImage(uint16_t version, uint16_t xloadflags, uint32_t init_size,
                                 size_t code_bytes) {
  std::vector<uint8_t> file(5 * 512 + code_bytes, 0x90);
  setup_header header{};
  header.setup_sects = 4;
  header.boot_flag = 0xaa55;
  header.header = 0x53726448;
  header.version = version;
  header.xloadflags = xloadflags;
  header.init_size = init_size;
  header.pref_address = 0x1000000;
  header.cmdline_size = 2047;
  header.initrd_addr_max = 0x7fffffff;
  std::memcpy(file.data() + 0x1f1, &header, sizeof(header));
  return file;
}

TEST_F(KernelLoaderTest, BzImageLoadsAtPreferredAddress) {
  std::string path = WriteFile("bz", MakeBzImage(0x020f, XLF_KERNEL_64, 0x800000, 4096));
  auto kernel = LoadKernel(path, *memory_);
  ASSERT_TRUE(kernel.ok()) << kernel.error().message();
  EXPECT_EQ(kernel->format, KernelFormat::kBzImage);
  EXPECT_EQ(kernel->entry, 0x1000200u);
  EXPECT_EQ(kernel->end, 0x1800000u);
  EXPECT_EQ(*memory_->ReadObject<uint8_t>(0x1000000), 0x90);
}

TEST_F(KernelLoaderTest, OldBootProtocolIsRejected) {
  std::string path = WriteFile("old", MakeBzImage(0x0209, 0, 0x800000, 4096));
  auto kernel = LoadKernel(path, *memory_);
  ASSERT_FALSE(kernel.ok());
  EXPECT_EQ(kernel.error().message(),
            path + ": bzImage uses boot protocol 2.09 without a 64-bit entry point; protocol "
                   "2.12 or later with a 64-bit kernel is required");
}

TEST_F(KernelLoaderTest, BzImageNeedingMoreRamIsRejected) {
  std::string path = WriteFile("huge", MakeBzImage(0x020f, XLF_KERNEL_64, 0x8000000, 4096));
  auto kernel = LoadKernel(path, *memory_);
  ASSERT_FALSE(kernel.ok());
  EXPECT_EQ(kernel.error().message(),
            path + ": kernel at 0x1000000+0x8000000 does not fit in guest RAM (64 MiB)");
}

TEST_F(KernelLoaderTest, BzImageWithoutCodeIsRejected) {
  auto bytes = MakeBzImage(0x020f, XLF_KERNEL_64, 0x800000, 0);
  std::string path = WriteFile("setup-only", bytes);
  auto kernel = LoadKernel(path, *memory_);
  ASSERT_FALSE(kernel.ok());
  EXPECT_EQ(kernel.error().message(),
            path + ": bzImage is truncated: no protected-mode code after the 2560 setup bytes");
}

TEST_F(KernelLoaderTest, InitrdGoesToTopOfLowRam) {
  std::string kernel_path = WriteFile("k.elf", MakeElf(0x1000000, {0xf4}, 0x1000000));
  auto kernel = LoadKernel(kernel_path, *memory_);
  ASSERT_TRUE(kernel.ok());
  std::string initrd_path = WriteFile("initrd", std::vector<uint8_t>(10000, 0xab));
  auto initrd = LoadInitrd(initrd_path, *kernel, *memory_);
  ASSERT_TRUE(initrd.ok()) << initrd.error().message();
  EXPECT_EQ(initrd->size, 10000u);
  EXPECT_EQ(initrd->address % 4096, 0u);
  EXPECT_LE(initrd->address + initrd->size, 64 * kMiB);
  EXPECT_GT(initrd->address + initrd->size, 64 * kMiB - 4096);
  EXPECT_EQ(*memory_->ReadObject<uint8_t>(initrd->address + 9999), 0xab);
}

TEST_F(KernelLoaderTest, InitrdLargerThanRamIsRejected) {
  std::string kernel_path = WriteFile("k.elf", MakeElf(0x1000000, {0xf4}, 0x1000000));
  auto kernel = LoadKernel(kernel_path, *memory_);
  ASSERT_TRUE(kernel.ok());
  std::string initrd_path = directory_ + "/huge-initrd";
  {
    std::ofstream out(initrd_path, std::ios::binary);
  }
  ASSERT_EQ(truncate(initrd_path.c_str(), 60 * kMiB), 0);
  auto initrd = LoadInitrd(initrd_path, *kernel, *memory_);
  ASSERT_FALSE(initrd.ok());
  EXPECT_EQ(initrd.error().message(),
            initrd_path + ": initrd of 62914560 bytes does not fit in guest RAM: 50327552 bytes "
                          "are free between the kernel and 0x4000000; give the guest more memory");
}

TEST_F(KernelLoaderTest, EmptyInitrdIsRejected) {
  std::string kernel_path = WriteFile("k.elf", MakeElf(0x1000000, {0xf4}, 0x1000000));
  auto kernel = LoadKernel(kernel_path, *memory_);
  ASSERT_TRUE(kernel.ok());
  std::string initrd_path = WriteFile("empty-initrd", {});
  auto initrd = LoadInitrd(initrd_path, *kernel, *memory_);
  ASSERT_FALSE(initrd.ok());
  EXPECT_EQ(initrd.error().message(), initrd_path + ": initrd is empty");
}

}  // namespace
}  // namespace forkvmm::boot
