// Runs the request pattern of `qemu-img bench` (QEMU 7.2) on forkvmm's
// block backend, so that disk_bench.py can run both on the same image. It
// sends COUNT requests of SIZE bytes with DEPTH in flight. The first starts
// at OFFSET, each next one STEP bytes further, wrapping at the image size.
// Requests go through the asynchronous API (io_uring), as a virtio-blk
// disk's do.
//
// Usage: qcow2_io_bench IMAGE [-c COUNT] [-d DEPTH] [-s SIZE] [-S STEP]
//                             [-o OFFSET] [-w] [--pattern BYTE] [-f raw|qcow2]
// Writes write BYTE (default 0). Reads with --pattern check, after the timed
// part, that the last DEPTH buffers read contain only BYTE.
// Prints "Run completed in S seconds." like qemu-img bench. The timed part
// excludes opening the image and the flush when it is closed, as in
// qemu-img bench.
#include <stdio.h>
#include <stdlib.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "devices/block/image.h"

namespace {

using forkvmm::block::BlockOp;
using forkvmm::block::ImageFormat;

struct Options {
  std::string path;
  ImageFormat format = ImageFormat::kQcow2;
  uint64_t count = 75000;  // qemu-img bench's defaults
  unsigned depth = 64;
  uint64_t size = 4096;
  uint64_t step = 0;  // 0: SIZE
  uint64_t offset = 0;
  bool write = false;
  bool has_pattern = false;
  uint8_t pattern = 0;
};

[[noreturn]] void Usage(const std::string& error) {
  fprintf(stderr,
          "qcow2_io_bench: %s\n"
          "usage: qcow2_io_bench IMAGE [-c COUNT] [-d DEPTH] [-s SIZE] [-S STEP] [-o OFFSET] "
          "[-w] [--pattern BYTE] [-f raw|qcow2]\n",
          error.c_str());
  exit(2);
}

uint64_t ParseNumber(std::string_view option, const char* text) {
  char* end = nullptr;
  unsigned long long value = strtoull(text, &end, 0);
  if (end == text || *end != '\0') {
    Usage("invalid value '" + std::string(text) + "' for " + std::string(option));
  }
  return value;
}

Options ParseOptions(int argc, char** argv) {
  Options options;
  for (int i = 1; i < argc; ++i) {
    std::string_view argument = argv[i];
    auto value = [&]() -> const char* {
      if (i + 1 >= argc) Usage("missing value for " + std::string(argument));
      return argv[++i];
    };
    if (argument == "-c") {
      options.count = ParseNumber(argument, value());
    } else if (argument == "-d") {
      options.depth = static_cast<unsigned>(ParseNumber(argument, value()));
    } else if (argument == "-s") {
      options.size = ParseNumber(argument, value());
    } else if (argument == "-S") {
      options.step = ParseNumber(argument, value());
    } else if (argument == "-o") {
      options.offset = ParseNumber(argument, value());
    } else if (argument == "-w") {
      options.write = true;
    } else if (argument == "--pattern") {
      options.pattern = static_cast<uint8_t>(ParseNumber(argument, value()));
      options.has_pattern = true;
    } else if (argument == "-f") {
      auto format = forkvmm::block::ParseFormatName(value());
      if (!format.ok()) Usage(format.error().message());
      options.format = *format;
    } else if (argument.starts_with("-")) {
      Usage("unknown option " + std::string(argument));
    } else if (options.path.empty()) {
      options.path = argument;
    } else {
      Usage("unexpected argument '" + std::string(argument) + "': only one IMAGE is accepted");
    }
  }
  if (options.path.empty()) Usage("missing IMAGE");
  if (options.depth < 1 || options.size < 1) Usage("invalid DEPTH or SIZE: both must be at least 1");
  if (options.step == 0) options.step = options.size;
  return options;
}

}  // namespace

int main(int argc, char** argv) {
  Options options = ParseOptions(argc, argv);
  auto opened = forkvmm::block::OpenImage(options.path, options.format,
                                          {.read_only = !options.write});
  if (!opened.ok()) {
    fprintf(stderr, "qcow2_io_bench: %s\n", opened.error().message().c_str());
    return 1;
  }
  auto& disk = *opened.value();
  if (options.offset + options.size > disk.size()) {
    fprintf(stderr, "qcow2_io_bench: the first request (offset %llu, %llu bytes) is past the "
                    "end of %s (%llu bytes)\n",
            static_cast<unsigned long long>(options.offset),
            static_cast<unsigned long long>(options.size), options.path.c_str(),
            static_cast<unsigned long long>(disk.size()));
    return 1;
  }
  if (auto started = disk.StartAsync(options.depth); !started.ok()) {
    fprintf(stderr, "qcow2_io_bench: io_uring setup failed: %s\n",
            started.error().message().c_str());
    return 1;
  }
  printf("Sending %llu %s requests, %llu bytes each, %u in parallel (starting at offset %llu, "
         "step size %llu)\n",
         static_cast<unsigned long long>(options.count), options.write ? "write" : "read",
         static_cast<unsigned long long>(options.size), options.depth,
         static_cast<unsigned long long>(options.offset),
         static_cast<unsigned long long>(options.step));

  // One buffer per request slot; a slot is reused once its request is done.
  // Read buffers start with the complement of the pattern, so the check
  // below fails where a read left a buffer alone.
  uint8_t fill = options.write ? options.pattern : static_cast<uint8_t>(~options.pattern);
  std::vector<std::vector<uint8_t>> buffers(options.depth,
                                            std::vector<uint8_t>(options.size, fill));
  std::vector<unsigned> free_slots;
  for (unsigned slot = 0; slot < options.depth; ++slot) free_slots.push_back(slot);
  uint64_t submitted = 0;
  uint64_t completed = 0;
  uint64_t failed = 0;
  uint64_t offset = options.offset;

  auto start = std::chrono::steady_clock::now();
  while (completed < options.count) {
    while (submitted < options.count && !free_slots.empty()) {
      unsigned slot = free_slots.back();
      free_slots.pop_back();
      disk.Submit({.op = options.write ? BlockOp::kWrite : BlockOp::kRead,
                   .offset = offset,
                   .iov = {{buffers[slot].data(), options.size}},
                   .done = [&, slot](forkvmm::Status status) {
                     if (!status.ok()) ++failed;
                     ++completed;
                     free_slots.push_back(slot);
                   }});
      ++submitted;
      // qemu-img bench 7.2 wraps at the image size. A request that would
      // cross the end starts at offset 0 here, where QEMU's would fail.
      offset = (offset + options.step) % disk.size();
      if (offset + options.size > disk.size()) offset = 0;
    }
    auto polled = disk.Poll();
    if (!polled.ok()) {
      fprintf(stderr, "qcow2_io_bench: polling failed: %s\n", polled.error().message().c_str());
      return 1;
    }
    if (*polled == 0) {
      if (auto waited = disk.Wait(); !waited.ok()) {
        fprintf(stderr, "qcow2_io_bench: waiting failed: %s\n", waited.error().message().c_str());
        return 1;
      }
    }
  }
  double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (failed > 0) {
    fprintf(stderr, "qcow2_io_bench: %llu of %llu requests failed\n",
            static_cast<unsigned long long>(failed), static_cast<unsigned long long>(completed));
    return 1;
  }
  printf("Run completed in %.3f seconds.\n", seconds);
  if (!options.write && options.has_pattern) {
    for (const auto& buffer : buffers) {
      for (uint8_t byte : buffer) {
        if (byte != options.pattern) {
          fprintf(stderr, "qcow2_io_bench: read data 0x%02x where the pattern is 0x%02x\n",
                  byte, options.pattern);
          return 1;
        }
      }
    }
  }
  return 0;
}
