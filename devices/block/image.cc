#include "devices/block/image.h"

#include <fmt/core.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <utility>
#include <vector>

#include "devices/block/qcow2.h"
#include "devices/block/qcow2_create.h"
#include "devices/block/raw.h"

namespace forkvmm::block {
namespace {

// The files already open in one chain, used to reject loops.
using ChainFiles = std::vector<std::pair<dev_t, ino_t>>;

Status CheckNotInChain(const struct stat& st, const ChainFiles& chain,
                       const std::string& named_by, const std::string& name) {
  for (const auto& seen : chain) {
    if (seen == std::make_pair(st.st_dev, st.st_ino)) {
      return Error(fmt::format("{}: backing file '{}' is already in the backing chain, which would "
                               "make a loop",
                               named_by, name));
    }
  }
  return Ok();
}

Status AddToChain(const ImageFile& file, ChainFiles& chain, const std::string& named_by,
                  const std::string& name) {
  ASSIGN_OR_RETURN(struct stat st, file.Stat());
  TRY(CheckNotInChain(st, chain, named_by, name));
  chain.emplace_back(st.st_dev, st.st_ino);
  return Ok();
}

Result<std::unique_ptr<BlockBackend>> OpenLayer(ImageFile file, ImageFormat format,
                                                const OpenOptions& options, ChainFiles& chain,
                                                int depth);

Result<std::unique_ptr<BlockBackend>> OpenBacking(const Qcow2Backend& image,
                                                  const OpenOptions& options, ChainFiles& chain,
                                                  int depth) {
  const qcow2::Header& header = image.header();
  const std::string& name = header.backing_file;
  if (!header.backing_format) {
    return Error(fmt::format("{}: backing file '{}' has no recorded format, and forkvmm does not "
                             "guess formats; record it with 'forkvmm img rebase -u -b {} -F "
                             "raw|qcow2 {}'",
                             image.path(), name, name, image.path()));
  }
  Result<ImageFormat> format = ParseFormatName(*header.backing_format);
  if (!format.ok()) {
    return std::move(format).error().WithContext(
        fmt::format("{}: backing file '{}'", image.path(), name));
  }
  if (depth + 1 >= kMaxBackingChainDepth) {
    return Error(fmt::format("{}: the backing chain is deeper than {} layers", image.path(),
                             kMaxBackingChainDepth));
  }
  std::string resolved = ResolveBackingPath(image.path(), name);
  const bool writable = depth == 0 && options.writable_backing;
  // Detect a loop before opening, because a second open of a file in the
  // chain would fail on its own lock first.
  struct stat named {};
  if (::stat(resolved.c_str(), &named) == 0) TRY(CheckNotInChain(named, chain, image.path(), name));
  Result<ImageFile> file = ImageFile::Open(resolved, writable, options.force_share && !writable);
  if (!file.ok()) {
    // A lock conflict names the backing file already.
    if (file.error().errnum() == EAGAIN) return std::move(file).error();
    std::string shown = resolved == name ? fmt::format("'{}'", name)
                                         : fmt::format("'{}' (resolved to '{}')", name, resolved);
    return Error(fmt::format("{}: cannot open backing file {}{}: {}", image.path(), shown,
                             writable ? " read-write" : "",
                             std::strerror(file.error().errnum())),
                 file.error().errnum());
  }
  TRY(AddToChain(*file, chain, image.path(), name));
  OpenOptions backing_options = options;
  backing_options.read_only = depth > 0 || !options.writable_backing;
  backing_options.writable_backing = false;
  return OpenLayer(std::move(file).value(), *format, backing_options, chain, depth + 1);
}

Result<std::unique_ptr<BlockBackend>> OpenLayer(ImageFile file, ImageFormat format,
                                                const OpenOptions& options, ChainFiles& chain,
                                                int depth) {
  if (format == ImageFormat::kRaw) {
    ASSIGN_OR_RETURN(std::unique_ptr<RawBackend> raw, RawBackend::Open(std::move(file)));
    return std::unique_ptr<BlockBackend>(std::move(raw));
  }
  ASSIGN_OR_RETURN(std::unique_ptr<Qcow2Backend> image, Qcow2Backend::Open(std::move(file)));
  if (!image->header().backing_file.empty() && options.open_backing) {
    ASSIGN_OR_RETURN(std::unique_ptr<BlockBackend> backing,
                     OpenBacking(*image, options, chain, depth));
    image->AttachBacking(std::move(backing));
  }
  return std::unique_ptr<BlockBackend>(std::move(image));
}

// The path to record in an overlay at `overlay_path` for the layer at
// `backing_path`: absolute stays absolute, relative becomes relative to the
// overlay's directory.
std::string BackingPathFor(const std::string& overlay_path, const std::string& backing_path) {
  namespace fs = std::filesystem;
  if (fs::path(backing_path).is_absolute()) return backing_path;
  std::error_code error;
  fs::path overlay_dir = fs::absolute(overlay_path, error).parent_path();
  fs::path target = fs::absolute(backing_path, error);
  if (error) return backing_path;
  fs::path relative = target.lexically_normal().lexically_relative(overlay_dir.lexically_normal());
  return relative.empty() ? backing_path : relative.string();
}

Status CreateOverlayOfSize(const std::string& overlay_path, const std::string& backing_path,
                           ImageFormat backing_format, uint64_t size, uint64_t cluster_size) {
  qcow2::CreateOptions options;
  options.size = size;
  options.cluster_size = cluster_size;
  options.backing_file = backing_path;
  options.backing_format = std::string(FormatName(backing_format));
  options.mode = ImageFile::CreateMode::kExclusive;
  return qcow2::CreateImage(overlay_path, options);
}

}  // namespace

std::string ResolveBackingPath(const std::string& image_path, const std::string& backing_name) {
  if (backing_name.empty() || backing_name[0] == '/') return backing_name;
  size_t slash = image_path.rfind('/');
  if (slash == std::string::npos) return backing_name;
  return image_path.substr(0, slash + 1) + backing_name;
}

Result<std::unique_ptr<BlockBackend>> OpenImage(const std::string& path, ImageFormat format,
                                                const OpenOptions& options) {
  const bool writable = !options.read_only && options.open_backing;
  ASSIGN_OR_RETURN(ImageFile file, ImageFile::Open(path, writable, options.force_share));
  ChainFiles chain;
  TRY(AddToChain(file, chain, path, path));
  return OpenLayer(std::move(file), format, options, chain, 0);
}

Result<std::unique_ptr<BlockBackend>> OpenOverlayOn(const std::string& overlay_path,
                                                    std::unique_ptr<BlockBackend> backing) {
  if (!backing->read_only()) {
    return Error(fmt::format("{}: the backing layer {} must be frozen (read-only) first",
                             overlay_path, backing->path()));
  }
  ASSIGN_OR_RETURN(ImageFile file, ImageFile::Open(overlay_path, /*writable=*/true));
  ASSIGN_OR_RETURN(std::unique_ptr<Qcow2Backend> image, Qcow2Backend::Open(std::move(file)));
  const qcow2::Header& header = image->header();
  if (header.backing_file.empty()) {
    return Error(fmt::format("{}: the image has no backing file", overlay_path));
  }
  std::string_view expected = FormatName(backing->format());
  if (header.backing_format != expected) {
    return Error(fmt::format("{}: records backing format '{}', but the open backing layer {} is {}",
                             overlay_path, header.backing_format.value_or(""), backing->path(),
                             expected));
  }
  std::string resolved = ResolveBackingPath(overlay_path, header.backing_file);
  struct stat named {};
  struct stat open_layer {};
  if (::stat(resolved.c_str(), &named) != 0 || ::stat(backing->path().c_str(), &open_layer) != 0 ||
      named.st_dev != open_layer.st_dev || named.st_ino != open_layer.st_ino) {
    return Error(fmt::format("{}: backing file '{}' is not the open layer {}", overlay_path,
                             header.backing_file, backing->path()));
  }
  image->AttachBacking(std::move(backing));
  return std::unique_ptr<BlockBackend>(std::move(image));
}

Result<ImageFormat> ProbeImageFormat(const std::string& path) {
  // Reading the magic needs no lock against writers, and the open the tool
  // makes next reports a conflict in its own terms.
  ASSIGN_OR_RETURN(ImageFile file,
                   ImageFile::Open(path, /*writable=*/false, /*force_share=*/true));
  uint8_t magic[4] = {};
  TRY(file.ReadZeroFilled(0, magic));
  return qcow2::LoadBe32(magic) == qcow2::kMagic ? ImageFormat::kQcow2 : ImageFormat::kRaw;
}

Status CreateImage(const std::string& path, const CreateImageOptions& options) {
  if (options.format == ImageFormat::kRaw) {
    if (!options.backing_file.empty()) {
      return Error(fmt::format("{}: raw images cannot have a backing file", path));
    }
    if (!options.size) return Error(fmt::format("{}: a size is needed for a raw image", path));
    ASSIGN_OR_RETURN(ImageFile file,
                     ImageFile::Create(path, options.exclusive ? ImageFile::CreateMode::kExclusive
                                                               : ImageFile::CreateMode::kTruncate));
    TRY(file.Truncate(*options.size));
    return file.DataSync();
  }

  qcow2::CreateOptions q;
  q.cluster_size = options.cluster_size;
  q.version = options.qcow2_version;
  q.refcount_bits = options.refcount_bits;
  q.lazy_refcounts = options.lazy_refcounts;
  q.compression_type = options.zstd ? qcow2::CompressionType::kZstd : qcow2::CompressionType::kZlib;
  q.mode = options.exclusive ? ImageFile::CreateMode::kExclusive : ImageFile::CreateMode::kTruncate;
  if (!options.backing_file.empty()) {
    if (!options.backing_format) {
      return Error(fmt::format("{}: a backing file needs its format (raw or qcow2); forkvmm "
                               "records it and never guesses it",
                               path));
    }
    // Open the whole backing chain now, so a broken one fails here and not
    // when a guest starts.
    std::string resolved = ResolveBackingPath(path, options.backing_file);
    ASSIGN_OR_RETURN(std::unique_ptr<BlockBackend> backing,
                     OpenImage(resolved, *options.backing_format, {.read_only = true}));
    q.size = options.size.value_or(backing->size());
    q.backing_file = options.backing_file;
    q.backing_format = std::string(FormatName(*options.backing_format));
  } else if (options.size) {
    q.size = *options.size;
  } else {
    return Error(fmt::format("{}: a size is needed for an image without a backing file", path));
  }
  return qcow2::CreateImage(path, q);
}

Status CreateOverlay(const std::string& overlay_path, const std::string& backing_path,
                     ImageFormat backing_format, uint64_t cluster_size) {
  std::string resolved = ResolveBackingPath(overlay_path, backing_path);
  // Only the size is read, and a VM about to fork still has the layer open
  // read-write, so this open shares write access.
  ASSIGN_OR_RETURN(std::unique_ptr<BlockBackend> backing,
                   OpenImage(resolved, backing_format,
                             {.read_only = true, .open_backing = false, .force_share = true}));
  return CreateOverlayOfSize(overlay_path, backing_path, backing_format, backing->size(),
                             cluster_size);
}

Status FreezeAndBranch(BlockBackend& top, const std::string& parent_overlay,
                       const std::string& child_overlay) {
  auto create = [&](const std::string& overlay) {
    return CreateOverlayOfSize(overlay, BackingPathFor(overlay, top.path()), top.format(),
                               top.size(), 65536);
  };
  TRY(create(parent_overlay));
  Status child = create(child_overlay);
  if (!child.ok()) {
    ::unlink(parent_overlay.c_str());
    return child;
  }
  Status frozen = top.ReopenReadOnly();
  if (!frozen.ok()) {
    ::unlink(parent_overlay.c_str());
    ::unlink(child_overlay.c_str());
    return frozen;
  }
  return Ok();
}

}  // namespace forkvmm::block
