// `forkvmm probe`: what this host offers guests, and which quirks apply.
#include <linux/kvm.h>

#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>

#include <fmt/core.h>

#include "tools/command.h"
#include "vmm/host.h"
#include "vmm/kvm/kvm.h"
#include "vmm/probe.h"
#include "vmm/runtime.h"

namespace forkvmm::cli {
namespace {

using nlohmann::json;

const char* VirtualizationName(Virtualization kind) {
  switch (kind) {
    case Virtualization::kHardware: return "hardware";
    case Virtualization::kSoftware: return "software";
    case Virtualization::kUnknown: break;
  }
  return "unknown";
}

struct ProbeArguments {
  bool json_output = false;
  std::string runtime_dir;
};

int RunProbe(const ProbeArguments& args) {
  json report;
  HostProfile host = DetectHost();
  report["virtualization"] = VirtualizationName(host.virtualization);
  report["kvm_module"] = host.kvm_module;
  report["profile"] = host.Describe();
  json hidden = json::array();
  for (const auto& feature : host.hidden_features) hidden.push_back(feature.name);
  report["hidden_cpu_features"] = hidden;
  report["extra_kernel_parameters"] = host.extra_kernel_parameters;

  auto system = kvm::KvmSystem::Open();
  report["kvm"] = {{"available", system.ok()},
                   {"error", system.ok() ? "" : system.error().message()}};
  if (system.ok()) {
    report["kvm"]["max_vcpus"] = system->CheckExtension(KVM_CAP_MAX_VCPUS);
    report["kvm"]["pit"] = system->CheckExtension(KVM_CAP_PIT2) > 0;
    report["kvm"]["tsc_deadline_timer"] = system->CheckExtension(KVM_CAP_TSC_DEADLINE_TIMER) > 0;
    report["kvm"]["dirty_log_ring"] = system->CheckExtension(KVM_CAP_DIRTY_LOG_RING) > 0;
  }

  int status = 0;
  json userspace = {{"supported", false}};
  if (!system.ok()) {
    userspace["reason"] = "KVM is not available";
  } else {
    auto runtime = RuntimeDirectory::Open(args.runtime_dir);
    auto support = runtime.ok() ? ProbeGuestUserspace(host, runtime->root())
                                : Result<GuestUserspaceSupport>(runtime.error());
    if (support.ok()) {
      userspace = {{"supported", support->supported},
                   {"reason", support->reason},
                   {"cached", support->cached}};
    } else {
      userspace["reason"] = support.error().message();
      status = 1;
    }
  }
  report["guest_userspace"] = userspace;

  if (args.json_output) {
    std::printf("%s\n", report.dump(2).c_str());
    return status;
  }
  std::printf("KVM:             %s\n",
              system.ok() ? fmt::format("available ({})", host.kvm_module).c_str()
                          : system.error().message().c_str());
  std::printf("virtualization:  %s\n", host.Describe().c_str());
  std::printf("guest userspace: %s\n",
              userspace["supported"].get<bool>()
                  ? "supported"
                  : ("unsupported: " + userspace.value("reason", std::string())).c_str());
  return status;
}

}  // namespace

Command AddProbeCommand(CLI::App& parent) {
  auto args = std::make_shared<ProbeArguments>();
  CLI::App* app = parent.add_subcommand(
      "probe", "Report the host's KVM, its quirks profile, and whether guest userspace can run");
  app->add_flag("--json", args->json_output, "Print JSON");
  app->add_option("--runtime-dir", args->runtime_dir, "Where the probe result is cached");
  return {app, [args] { return RunProbe(*args); }};
}

}  // namespace forkvmm::cli
