// `forkvmm img info`: what an image is, in qemu-img's human and JSON shapes.
#include <fmt/core.h>
#include <sys/stat.h>

#include <nlohmann/json.hpp>

#include <cstdio>
#include <memory>
#include <vector>

#include "devices/block/image.h"
#include "devices/block/qcow2.h"
#include "tools/img_internal.h"

namespace forkvmm::cli::img {
namespace {

using block::BlockBackend;
using block::ImageFormat;
using nlohmann::ordered_json;

// Bytes the file occupies on disk (allocated blocks), as `du` counts them.
uint64_t DiskUsage(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return 0;
  return static_cast<uint64_t>(st.st_blocks) * 512;
}

ordered_json DescribeJson(const BlockBackend& layer) {
  ordered_json info;
  info["virtual-size"] = layer.size();
  info["filename"] = layer.path();
  const auto* qcow2 = dynamic_cast<const block::Qcow2Backend*>(&layer);
  if (qcow2 != nullptr) info["cluster-size"] = qcow2->cluster_size();
  info["format"] = block::FormatName(layer.format());
  info["actual-size"] = DiskUsage(layer.path());
  if (qcow2 == nullptr) {
    info["dirty-flag"] = false;
    return info;
  }
  const block::qcow2::Header& h = qcow2->header();
  ordered_json data = {
      {"compat", h.version >= 3 ? "1.1" : "0.10"},
      {"compression-type",
       h.compression_type == block::qcow2::CompressionType::kZstd ? "zstd" : "zlib"}};
  // Version 2 images have no feature bits, so qemu-img omits these keys.
  if (h.version >= 3) data["lazy-refcounts"] = h.lazy_refcounts();
  data["refcount-bits"] = h.refcount_bits();
  if (h.version >= 3) {
    data["corrupt"] = h.corrupt();
    data["extended-l2"] = false;
  }
  info["format-specific"] = {{"type", "qcow2"}, {"data", data}};
  if (!h.backing_file.empty()) {
    info["full-backing-filename"] = block::ResolveBackingPath(layer.path(), h.backing_file);
    info["backing-filename"] = h.backing_file;
    if (h.backing_format) info["backing-filename-format"] = *h.backing_format;
  }
  info["dirty-flag"] = h.dirty();
  return info;
}

void PrintHuman(const BlockBackend& layer) {
  std::string out = fmt::format("image: {}\nfile format: {}\nvirtual size: {} ({} bytes)\n"
                                "disk size: {}\n",
                                layer.path(), block::FormatName(layer.format()),
                                HumanSize(layer.size()), layer.size(),
                                HumanSize(DiskUsage(layer.path())));
  if (const auto* qcow2 = dynamic_cast<const block::Qcow2Backend*>(&layer)) {
    const block::qcow2::Header& h = qcow2->header();
    out += fmt::format("cluster_size: {}\n", qcow2->cluster_size());
    if (!h.backing_file.empty()) {
      out += fmt::format("backing file: {} (actual path: {})\n", h.backing_file,
                         block::ResolveBackingPath(layer.path(), h.backing_file));
      if (h.backing_format) out += fmt::format("backing file format: {}\n", *h.backing_format);
    }
    out += fmt::format("Format specific information:\n    compat: {}\n    compression type: {}\n",
                       h.version >= 3 ? "1.1" : "0.10",
                       h.compression_type == block::qcow2::CompressionType::kZstd ? "zstd"
                                                                                   : "zlib");
    if (h.version >= 3) out += fmt::format("    lazy refcounts: {}\n", h.lazy_refcounts());
    out += fmt::format("    refcount bits: {}\n", h.refcount_bits());
    if (h.version >= 3) out += fmt::format("    corrupt: {}\n    extended l2: false\n", h.corrupt());
    if (h.dirty()) out += "    dirty: true\n";
  }
  std::fputs(out.c_str(), stdout);
}

}  // namespace

int RunInfo(const InfoArgs& args) {
  Result<ImageFormat> format = ResolveFormat(args.path, args.format);
  if (!format.ok()) return Fail(format.error());
  // Without --backing-chain only the named layer is opened, so info works
  // even when the backing file is missing.
  block::OpenOptions options{.read_only = true, .open_backing = args.backing_chain};
  auto image = block::OpenImage(args.path, *format, options);
  if (!image.ok()) return Fail(image.error());
  if (!args.backing_chain) {
    // Opening the chain above already rejects a loop.
    Status chain = WalkBackingChain(args.path, *format, [](auto&, auto&) -> Status { return Ok(); });
    if (!chain.ok()) return Fail(chain.error());
  }

  std::vector<const BlockBackend*> layers;
  for (const BlockBackend* layer = image->get(); layer != nullptr; layer = layer->backing()) {
    layers.push_back(layer);
    if (!args.backing_chain) break;
  }
  if (args.json) {
    ordered_json out = ordered_json::array();
    for (const BlockBackend* layer : layers) out.push_back(DescribeJson(*layer));
    std::string text = (args.backing_chain ? out : out[0]).dump(4) + "\n";
    std::fputs(text.c_str(), stdout);
    return 0;
  }
  for (size_t i = 0; i < layers.size(); ++i) {
    if (i > 0) std::fputs("\n", stdout);
    PrintHuman(*layers[i]);
  }
  return 0;
}

}  // namespace forkvmm::cli::img
