// `forkvmm img`: create, inspect, check and merge disk images.
#include <fmt/core.h>
#include <sys/stat.h>

#include <cstdio>
#include <filesystem>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "devices/block/image.h"
#include "devices/block/image_ops.h"
#include "devices/block/qcow2.h"
#include "tools/command.h"
#include "tools/img_internal.h"
#include "tools/img_progress.h"
#include "vmm/base/units.h"

namespace forkvmm::cli {
namespace img {

Result<block::ImageFormat> ResolveFormat(const std::string& path, const std::string& format_name) {
  if (!format_name.empty()) return block::ParseFormatName(format_name);
  return block::ProbeImageFormat(path);
}

Status WalkBackingChain(const std::string& path, block::ImageFormat format,
                        const std::function<Status(const std::string&, const struct stat&)>& visit) {
  std::vector<std::pair<dev_t, ino_t>> seen;
  std::string layer = path;
  struct stat st {};
  if (::stat(layer.c_str(), &st) != 0) return Ok();
  for (int depth = 0; depth < block::kMaxBackingChainDepth; ++depth) {
    seen.emplace_back(st.st_dev, st.st_ino);
    TRY(visit(layer, st));
    if (format != block::ImageFormat::kQcow2) return Ok();
    auto image = block::OpenImage(layer, format, {.read_only = true, .open_backing = false});
    if (!image.ok()) return Ok();
    const auto* qcow2 = dynamic_cast<const block::Qcow2Backend*>(image->get());
    if (qcow2 == nullptr) return Ok();
    const block::qcow2::Header& header = qcow2->header();
    if (header.backing_file.empty() || !header.backing_format) return Ok();
    Result<block::ImageFormat> backing_format = block::ParseFormatName(*header.backing_format);
    if (!backing_format.ok()) return Ok();
    std::string backing = block::ResolveBackingPath(layer, header.backing_file);
    if (::stat(backing.c_str(), &st) != 0) return Ok();
    for (const auto& [dev, ino] : seen) {
      if (dev == st.st_dev && ino == st.st_ino) {
        return Error(fmt::format("{}: backing file '{}' is already in the backing chain, which "
                                 "would make a loop",
                                 layer, header.backing_file));
      }
    }
    layer = std::move(backing);
    format = *backing_format;
  }
  return Ok();
}

std::string HumanSize(uint64_t bytes) {
  static const char* const kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  double value = static_cast<double>(bytes);
  size_t unit = 0;
  while (value >= 1024 && unit + 1 < std::size(kUnits)) {
    value /= 1024;
    ++unit;
  }
  // Three significant digits, without switching to exponent notation.
  return value >= 100 ? fmt::format("{:.0f} {}", value, kUnits[unit])
                      : fmt::format("{:.3g} {}", value, kUnits[unit]);
}

int Fail(const Error& error, int exit_code) {
  std::string line = "forkvmm: " + error.message() + "\n";
  std::fputs(line.c_str(), stderr);
  return exit_code;
}

namespace {

struct CreateArgs {
  std::string path;
  std::string size;
  std::string format = "qcow2";
  std::string backing_file;
  std::string backing_format;
  std::string cluster_size;
  std::vector<std::string> options;
  bool quiet = false;
};

bool ParseOnOff(const std::string& value, bool* out) {
  if (value == "on" || value == "true") {
    *out = true;
  } else if (value == "off" || value == "false") {
    *out = false;
  } else {
    return false;
  }
  return true;
}

// Applies one "-o key=value" setting, in qemu-img's option names.
Status ApplyCreateOption(const std::string& key, const std::string& value,
                         block::CreateImageOptions& options, CreateArgs& args) {
  Error invalid(fmt::format("invalid value '{}' for -o {}", value, key));
  if (key == "cluster_size") {
    ASSIGN_OR_RETURN(options.cluster_size, ParseSize(value));
  } else if (key == "compat") {
    if (value == "0.10" || value == "v2") {
      options.qcow2_version = 2;
    } else if (value == "1.1" || value == "v3") {
      options.qcow2_version = 3;
    } else {
      return invalid;
    }
  } else if (key == "refcount_bits") {
    ASSIGN_OR_RETURN(uint64_t bits, ParseSize(value));
    options.refcount_bits = static_cast<uint32_t>(bits);
    if (bits != options.refcount_bits) return invalid;
  } else if (key == "lazy_refcounts") {
    if (!ParseOnOff(value, &options.lazy_refcounts)) return invalid;
  } else if (key == "compression_type") {
    if (value != "zlib" && value != "zstd") return invalid;
    options.zstd = value == "zstd";
  } else if (key == "backing_file") {
    args.backing_file = value;
  } else if (key == "backing_fmt") {
    args.backing_format = value;
  } else if (key == "preallocation") {
    if (value != "off") return Error("only preallocation=off is supported");
  } else {
    return Error(fmt::format("unknown option '{}' for -o (supported: cluster_size, compat, "
                             "refcount_bits, lazy_refcounts, compression_type, backing_file, "
                             "backing_fmt, preallocation)",
                             key));
  }
  return Ok();
}

Result<block::CreateImageOptions> BuildCreateOptions(CreateArgs& args) {
  block::CreateImageOptions options;
  ASSIGN_OR_RETURN(options.format, block::ParseFormatName(args.format));
  for (const std::string& list : args.options) {
    std::stringstream items(list);
    for (std::string item; std::getline(items, item, ',');) {
      size_t eq = item.find('=');
      if (eq == std::string::npos) return Error(fmt::format("-o {}: expected key=value", item));
      TRY(ApplyCreateOption(item.substr(0, eq), item.substr(eq + 1), options, args));
    }
  }
  if (!args.cluster_size.empty()) {
    ASSIGN_OR_RETURN(options.cluster_size, ParseSize(args.cluster_size));
  }
  if (!args.size.empty()) {
    ASSIGN_OR_RETURN(uint64_t size, ParseSize(args.size));
    options.size = size;
  }
  options.backing_file = args.backing_file;
  if (!args.backing_format.empty()) {
    ASSIGN_OR_RETURN(options.backing_format, block::ParseFormatName(args.backing_format));
  }
  return options;
}

// Returns `path` made absolute, with the symlinks of its existing part
// resolved, or an empty path when that fails.
std::filesystem::path CanonicalName(const std::string& path) {
  std::error_code error;
  std::filesystem::path absolute = std::filesystem::absolute(path, error);
  if (error) return {};
  std::filesystem::path name = std::filesystem::weakly_canonical(absolute, error);
  return error ? std::filesystem::path() : name;
}

// Fails when the image about to be created at `path` is its own backing
// file or a layer of the backing chain, which creating it would overwrite.
// The names are compared first, because the new image need not exist yet.
Status CheckBackingIsNotImage(const std::string& path, const block::CreateImageOptions& options) {
  if (options.backing_file.empty() || !options.backing_format) return Ok();
  const std::string backing = block::ResolveBackingPath(path, options.backing_file);
  std::filesystem::path image_name = CanonicalName(path);
  if (!image_name.empty() && image_name == CanonicalName(backing)) {
    return Error(fmt::format("{}: the backing file '{}' is the image being created", path,
                             options.backing_file));
  }
  struct stat image {};
  if (::stat(path.c_str(), &image) != 0) return Ok();
  return WalkBackingChain(
      backing, *options.backing_format, [&](const std::string& layer, const struct stat& st) -> Status {
        if (st.st_dev != image.st_dev || st.st_ino != image.st_ino) return Ok();
        if (layer == backing) {
          return Error(fmt::format("{}: the backing file '{}' is the image being created", path,
                                   options.backing_file));
        }
        return Error(fmt::format("{}: the backing chain of '{}' contains the image being "
                                 "created (as {})",
                                 path, options.backing_file, layer));
      });
}

int RunCreate(CreateArgs& args) {
  Result<block::CreateImageOptions> options = BuildCreateOptions(args);
  if (!options.ok()) return Fail(std::move(options).error().WithContext(args.path));
  Status distinct = CheckBackingIsNotImage(args.path, *options);
  if (!distinct.ok()) return Fail(distinct.error());
  Status created = block::CreateImage(args.path, *options);
  if (!created.ok()) return Fail(created.error());
  if (args.quiet) return 0;
  std::string line = fmt::format("Created {}: format {}", args.path, args.format);
  auto image = block::OpenImage(args.path, options->format, {.read_only = true, .open_backing = false});
  if (image.ok()) line += fmt::format(", virtual size {} bytes", (*image)->size());
  if (options->format == block::ImageFormat::kQcow2) {
    line += fmt::format(", cluster size {}", options->cluster_size);
  }
  if (!args.backing_file.empty()) {
    line += fmt::format(", backing file {} ({})", args.backing_file, args.backing_format);
  }
  std::puts(line.c_str());
  return 0;
}

struct CommitArgs {
  std::string path;
  std::string format;
  bool keep_top = false;
  bool quiet = false;
  bool progress = false;
};

int RunCommit(const CommitArgs& args) {
  Result<block::ImageFormat> format = ResolveFormat(args.path, args.format);
  if (!format.ok()) return Fail(format.error());
  if (*format != block::ImageFormat::kQcow2) {
    return Fail(Error(fmt::format("{}: only qcow2 images have a backing file to commit into",
                                  args.path)));
  }
  ProgressBar progress(!args.quiet);
  Status committed = block::Commit(
      args.path, {.empty_top = !args.keep_top,
                  .progress = [&](uint64_t done, uint64_t total) { progress.Update(done, total); }});
  progress.Finish();
  if (!committed.ok()) return Fail(committed.error());
  if (!args.quiet) std::printf("%s: committed into its backing file\n", args.path.c_str());
  return 0;
}

struct RebaseArgs {
  std::string path;
  std::string format;
  std::string backing_file;
  std::string backing_format;
  bool unsafe = false;
  bool quiet = false;
  bool progress = false;
};

int RunRebase(const RebaseArgs& args) {
  Result<block::ImageFormat> format = ResolveFormat(args.path, args.format);
  if (!format.ok()) return Fail(format.error());
  if (*format != block::ImageFormat::kQcow2) {
    return Fail(Error(fmt::format("{}: only qcow2 images have a backing file", args.path)));
  }
  block::RebaseOptions options{.backing_file = args.backing_file, .unsafe = args.unsafe};
  if (!args.backing_format.empty()) {
    Result<block::ImageFormat> backing_format = block::ParseFormatName(args.backing_format);
    if (!backing_format.ok()) return Fail(backing_format.error());
    options.backing_format = *backing_format;
  }
  ProgressBar progress(!args.quiet);
  options.progress = [&](uint64_t done, uint64_t total) { progress.Update(done, total); };
  Status rebased = block::Rebase(args.path, options);
  progress.Finish();
  if (!rebased.ok()) return Fail(rebased.error());
  return 0;
}

// The storage the parsed options are bound to, owned by the run callback.
struct ImgArgs {
  CreateArgs create;
  InfoArgs info;
  CheckArgs check;
  CommitArgs commit;
  RebaseArgs rebase;
  std::string info_output = "human";
  std::string check_output = "human";
};

const std::vector<std::string> kFormats = {"qcow2", "raw"};

CLI::App* AddCreate(CLI::App& img, CreateArgs& a) {
  CLI::App* cmd = img.add_subcommand("create", "Create a new disk image");
  cmd->add_option("-f,--format", a.format, "Image format")->check(CLI::IsMember(kFormats));
  cmd->add_option("-b,--backing", a.backing_file,
                  "Backing file, recorded as given (relative to the new image's directory)");
  cmd->add_option("-F,--backing-format", a.backing_format, "Format of the backing file")
      ->check(CLI::IsMember(kFormats));
  cmd->add_option("-o", a.options,
                  "qcow2 options key=value[,...]: cluster_size, compat (0.10 or 1.1), "
                  "refcount_bits, lazy_refcounts, compression_type (zlib or zstd)")
      ->allow_extra_args(false);  // one value per -o, so it cannot swallow the file name
  cmd->add_option("--cluster-size", a.cluster_size, "qcow2 cluster size in bytes (K/M suffixes)");
  cmd->add_flag("-q,--quiet", a.quiet, "Print nothing on success");
  cmd->add_option("file", a.path, "Image to create")->required();
  cmd->add_option("size", a.size,
                  "Virtual size in bytes, with an optional K, M, G or T suffix (default: the "
                  "backing file's size)");
  return cmd;
}

CLI::App* AddInfo(CLI::App& img, InfoArgs& a, std::string& output) {
  CLI::App* cmd = img.add_subcommand("info", "Show an image's format, sizes and backing file");
  cmd->add_option("-f,--format", a.format, "Image format (probed when omitted)")
      ->check(CLI::IsMember(kFormats));
  cmd->add_option("--output", output, "Output format")->check(CLI::IsMember({"human", "json"}));
  cmd->add_flag("--json", a.json, "Same as --output=json");
  cmd->add_flag("--backing-chain", a.backing_chain, "Show every layer of the backing chain");
  cmd->add_option("file", a.path, "Image")->required();
  return cmd;
}

CLI::App* AddCheck(CLI::App& img, CheckArgs& a, std::string& output) {
  CLI::App* cmd = img.add_subcommand(
      "check", "Check qcow2 metadata (exit 0 consistent, 1 not completed, 2 corrupt, 3 leaks)");
  cmd->add_option("-f,--format", a.format, "Image format (probed when omitted)")
      ->check(CLI::IsMember(kFormats));
  cmd->add_option("-r,--repair", a.repair, "Repair leaked clusters, or all repairable problems")
      ->check(CLI::IsMember({"leaks", "all"}));
  cmd->add_option("--output", output, "Output format")->check(CLI::IsMember({"human", "json"}));
  cmd->add_flag("--json", a.json, "Same as --output=json");
  cmd->add_flag("-q,--quiet", a.quiet, "Print nothing; only the exit status reports");
  cmd->add_option("file", a.path, "Image")->required();
  return cmd;
}

CLI::App* AddCommit(CLI::App& img, CommitArgs& a) {
  CLI::App* cmd = img.add_subcommand("commit", "Merge an image into its backing file");
  cmd->add_option("-f,--format", a.format, "Image format (probed when omitted)")
      ->check(CLI::IsMember(kFormats));
  cmd->add_flag("-d", a.keep_top, "Keep the committed data in the image instead of emptying it");
  cmd->add_flag("-q,--quiet", a.quiet, "Print nothing and draw no progress bar");
  cmd->add_flag("-p", a.progress,
                "Accepted for qemu-img compatibility: the progress bar shows on terminals anyway");
  cmd->add_option("file", a.path, "Image to commit")->required();
  return cmd;
}

CLI::App* AddRebase(CLI::App& img, RebaseArgs& a) {
  CLI::App* cmd = img.add_subcommand(
      "rebase", "Change an image's backing file; -b \"\" makes it standalone");
  cmd->add_option("-f,--format", a.format, "Image format (probed when omitted)")
      ->check(CLI::IsMember(kFormats));
  cmd->add_option("-b,--backing", a.backing_file,
                  "New backing file (relative to the image's directory); empty for none")
      ->required();
  cmd->add_option("-F,--backing-format", a.backing_format, "Format of the new backing file")
      ->check(CLI::IsMember(kFormats));
  cmd->add_flag("-u", a.unsafe, "Only rewrite the header (the contents must already match)");
  cmd->add_flag("-q,--quiet", a.quiet, "Draw no progress bar");
  cmd->add_flag("-p", a.progress,
                "Accepted for qemu-img compatibility: the progress bar shows on terminals anyway");
  cmd->add_option("file", a.path, "Image to rebase")->required();
  return cmd;
}

}  // namespace
}  // namespace img

Command AddImgCommand(CLI::App& parent) {
  CLI::App* app = parent.add_subcommand("img", "Create, inspect, check and merge disk images");
  app->require_subcommand(1);
  auto args = std::make_shared<img::ImgArgs>();
  CLI::App* create = img::AddCreate(*app, args->create);
  CLI::App* info = img::AddInfo(*app, args->info, args->info_output);
  CLI::App* check = img::AddCheck(*app, args->check, args->check_output);
  CLI::App* commit = img::AddCommit(*app, args->commit);
  CLI::App* rebase = img::AddRebase(*app, args->rebase);
  return {app, [=] {
            if (create->parsed()) return img::RunCreate(args->create);
            if (info->parsed()) {
              args->info.json = args->info.json || args->info_output == "json";
              return img::RunInfo(args->info);
            }
            if (check->parsed()) {
              args->check.json = args->check.json || args->check_output == "json";
              return img::RunCheck(args->check);
            }
            if (commit->parsed()) return img::RunCommit(args->commit);
            if (rebase->parsed()) return img::RunRebase(args->rebase);
            return 2;
          }};
}

}  // namespace forkvmm::cli
