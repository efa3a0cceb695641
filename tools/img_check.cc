// `forkvmm img check`: metadata consistency, with qemu-img's exit codes.
#include <fmt/core.h>

#include <nlohmann/json.hpp>

#include <cstdio>

#include "devices/block/qcow2_check.h"
#include "tools/img_internal.h"

namespace forkvmm::cli::img {
namespace {

using block::qcow2::CheckReport;
using block::qcow2::RepairMode;

constexpr int kExitConsistent = 0;
constexpr int kExitNotCompleted = 1;
constexpr int kExitCorrupt = 2;
constexpr int kExitLeaks = 3;
constexpr int kExitUnsupported = 63;

int ExitCode(const CheckReport& report) {
  if (report.check_errors > 0) return kExitNotCompleted;
  if (report.corruptions > 0) return kExitCorrupt;
  if (report.leaks > 0) return kExitLeaks;
  return kExitConsistent;
}

double Percent(uint64_t part, uint64_t whole) {
  return whole == 0 ? 0.0 : 100.0 * static_cast<double>(part) / static_cast<double>(whole);
}

void PrintJson(const std::string& path, const CheckReport& report) {
  nlohmann::ordered_json out = {
      {"image-end-offset", report.image_end_offset},
      {"total-clusters", report.total_clusters},
      {"check-errors", report.check_errors},
      {"allocated-clusters", report.allocated_clusters},
      {"filename", path},
      {"format", "qcow2"},
      {"fragmented-clusters", report.fragmented_clusters},
      {"compressed-clusters", report.compressed_clusters},
  };
  if (report.corruptions > 0) out["corruptions"] = report.corruptions;
  if (report.leaks > 0) out["leaks"] = report.leaks;
  if (report.corruptions_fixed > 0) out["corruptions-fixed"] = report.corruptions_fixed;
  if (report.leaks_fixed > 0) out["leaks-fixed"] = report.leaks_fixed;
  std::string text = out.dump(4) + "\n";
  std::fputs(text.c_str(), stdout);
}

void PrintHuman(const std::string& path, const CheckReport& report) {
  std::string out;
  for (const std::string& message : report.messages) out += message + "\n";
  if (report.messages_dropped > 0) {
    out += fmt::format("({} more problems not listed)\n", report.messages_dropped);
  }
  if (report.leaks_fixed > 0 || report.corruptions_fixed > 0) {
    out += fmt::format("Repaired {} leaked clusters and {} corruptions.\n", report.leaks_fixed,
                       report.corruptions_fixed);
  }
  if (report.corruptions == 0 && report.leaks == 0 && report.check_errors == 0) {
    out += fmt::format("{}: no errors found.\n", path);
  } else {
    out += fmt::format("{}: {} corruptions, {} leaked clusters, {} checks not completed.\n", path,
                       report.corruptions, report.leaks, report.check_errors);
  }
  out += fmt::format(
      "{}/{} = {:.2f}% allocated, {:.2f}% fragmented, {:.2f}% compressed clusters\n",
      report.allocated_clusters, report.total_clusters,
      Percent(report.allocated_clusters, report.total_clusters),
      Percent(report.fragmented_clusters, report.allocated_clusters),
      Percent(report.compressed_clusters, report.allocated_clusters));
  out += fmt::format("Image end offset: {}\n", report.image_end_offset);
  std::fputs(out.c_str(), stdout);
}

}  // namespace

int RunCheck(const CheckArgs& args) {
  Result<block::ImageFormat> format = ResolveFormat(args.path, args.format);
  if (!format.ok()) return Fail(format.error());
  if (*format != block::ImageFormat::kQcow2) {
    return Fail(Error(fmt::format("{}: {} images have no metadata to check", args.path,
                                  block::FormatName(*format))),
                kExitUnsupported);
  }
  RepairMode mode = args.repair == "all"     ? RepairMode::kAll
                    : args.repair == "leaks" ? RepairMode::kLeaks
                                             : RepairMode::kNone;
  // A looping chain cannot be opened, so the check reports it as not completed.
  Status chain = WalkBackingChain(args.path, *format, [](auto&, auto&) -> Status { return Ok(); });
  if (!chain.ok()) return Fail(chain.error(), kExitNotCompleted);
  Result<CheckReport> report = block::qcow2::CheckImage(args.path, mode);
  if (!report.ok()) return Fail(report.error(), kExitNotCompleted);
  if (args.json) {
    PrintJson(args.path, *report);
  } else if (!args.quiet) {
    PrintHuman(args.path, *report);
  }
  return ExitCode(*report);
}

}  // namespace forkvmm::cli::img
