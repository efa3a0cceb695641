#!/usr/bin/python3
"""Linux boot time of forkvmm against QEMU microvm, with the same inputs.

Both VMMs boot the same vmlinux file (forkvmm through the Linux 64-bit boot
protocol, QEMU through the kernel's PVH note) with the same kernel command
line and, as far as the two allow, the same CPU features. Runs alternate
between the two. Two configurations:
  initramfs  the guest's initramfs.cpio as the root filesystem;
  disk       no initramfs; root=/dev/vda on a fresh qcow2 overlay over a copy
             of the guest's rootfs.ext4 (virtio-blk over virtio-mmio).
Each run records the wall time from starting the VMM process until the
console shows "Run /init" and, where guest userspace runs, the ready line
"forkvmm-guest: ready". forkvmm runs with --stats, whose per-vCPU exit counts
and guest/VMM time are kept with the run. When "Run /init" appears, the
benchmark reads KVM's own statistics of each vCPU (exits handled in the
kernel, emulated instructions, page faults) from both VMMs over QMP.

Before booting, the benchmark runs bench/guests/cpuid.elf under both VMMs
and compares the CPUID leaves the guest reads, to check that the -cpu flags
given to QEMU match forkvmm's quirks profile.
"""

import argparse
import functools
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402

INIT_LINE = "Run /init as init process"
READY_LINE = "forkvmm-guest: ready"
PANIC_LINE = "Kernel panic - not syncing"
# QEMU's message when KVM_RUN fails with KVM_EXIT_INTERNAL_ERROR. QEMU then
# keeps the VM stopped and the process alive.
KVM_ERROR_LINE = "KVM internal error"
# After a guest kernel panic, or KVM_ERROR_LINE on the VMM's stderr, how
# long the VMM gets to end the run itself. With panic=-1 reboot=k the guest
# resets the VM through the i8042, which ends a forkvmm run. Under QEMU 7.2
# microvm here the console stopped at the panic and QEMU ran on until the
# boot timeout.
PANIC_GRACE_SECONDS = 10
QEMU_TIMEOUT_SECONDS = 1200

# forkvmm's names of hidden CPU features that are QEMU -cpu property names
# too, with the exceptions mapped. OSXSAVE has no property: it follows CR4,
# and with XSAVE hidden the guest never sets CR4.OSXSAVE.
QEMU_FEATURE_NAMES = {"arch_capabilities": "arch-capabilities", "osxsave": None}
# The KVM paravirtual features forkvmm's profile for software
# virtualization hides (PV unhalt, TLB flush, send IPI, sched yield).
QEMU_KVM_PV_OFF = ["kvm-pv-unhalt=off", "kvm-pv-tlb-flush=off", "kvm-pv-ipi=off",
                   "kvm-pv-sched-yield=off"]


def default_guest_directory():
    cache = os.environ.get("FORKVMM_CACHE") or "/var/cache/forkvmm"
    for directory in (os.path.join(cache, "guest", "current"), "/tmp/fvmcache/guest/current"):
        if os.path.exists(os.path.join(directory, "vmlinux")):
            return directory
    return os.path.join(cache, "guest", "current")


def probe(forkvmm, runtime_dir):
    result = subprocess.run([forkvmm, "probe", "--json", "--runtime-dir", runtime_dir],
                            capture_output=True, text=True, timeout=300)
    return json.loads(result.stdout)


def qemu_cpu_flags(probe_report):
    """Build the -cpu value that hides from QEMU's guest what forkvmm's quirks
    profile hides from its guest."""
    flags = ["host"]
    for name in probe_report.get("hidden_cpu_features", []):
        qemu_name = QEMU_FEATURE_NAMES.get(name, name)
        if qemu_name:
            flags.append(f"-{qemu_name}")
    if probe_report.get("virtualization") == "software":
        flags += QEMU_KVM_PV_OFF
    elif "-arch-capabilities" not in flags:
        # QEMU 7.2 aborts where KVM rejects IA32_ARCH_CAPABILITIES.
        flags.append("-arch-capabilities")
    return ",".join(flags)


class ConsoleReader:
    """Reads a process's console from a pipe and records when each marker
    first appears (monotonic seconds)."""

    def __init__(self, stream, markers, log_path):
        self.markers = markers
        self.seen = {}
        self.first_output = None
        self.log = open(log_path, "wb")
        self.thread = threading.Thread(target=self._run, args=(stream,), daemon=True)
        self.thread.start()

    def _run(self, stream):
        pending = b""
        while True:
            data = os.read(stream.fileno(), 65536)
            if not data:
                break
            now = time.monotonic()
            if self.first_output is None:
                self.first_output = now
            self.log.write(data)
            self.log.flush()
            pending = (pending + data)[-4096:]
            text = pending.decode(errors="replace")
            for marker in self.markers:
                if marker not in self.seen and marker in text:
                    self.seen[marker] = now
        self.log.close()


STATS_RE = re.compile(r"vCPU (\d+): ([\d.]+) s in guest, ([\d.]+) s in VMM, (\d+) interrupted "
                      r"runs; exits:([^;]*)(?:; stepped over (\d+) FWAIT)?")


def parse_stats(stderr_text):
    """Parse forkvmm's --stats lines, one per vCPU."""
    vcpus = []
    for line in stderr_text.splitlines():
        match = STATS_RE.search(line)
        if not match:
            continue
        exits = {}
        for item in match.group(5).split():
            name, _, count = item.partition("=")
            # A format this parser does not know must not end an hour-long run.
            if count.isdigit():
                exits[name] = int(count)
        vcpus.append({"vcpu": int(match.group(1)), "guest_s": float(match.group(2)),
                      "vmm_s": float(match.group(3)), "interrupted_runs": int(match.group(4)),
                      "exits": exits, "stepped_fwaits": int(match.group(6) or 0)})
    return vcpus


def forkvmm_kvm_stats(runtime_dir):
    """Reads KVM's statistics of every vCPU of the one forkvmm VM running in
    `runtime_dir` through its control socket (query-cpus-fast, which pauses
    the VM for the length of the reads)."""
    sockets = glob.glob(os.path.join(runtime_dir, "*", "control.sock"))
    if len(sockets) != 1:
        raise benchlib.QmpError(f"expected one control socket in {runtime_dir}, found "
                                f"{len(sockets)}")
    qmp = benchlib.Qmp(sockets[0])
    try:
        vcpus = qmp.execute("query-cpus-fast")
    finally:
        qmp.close()
    return [vcpu.get("kvm-stats", {}) for vcpu in vcpus]


def qemu_kvm_stats(qmp_path):
    """Reads KVM's statistics of every vCPU of a QEMU VM with QMP's
    query-stats (tried with QEMU 7.2). Histograms are summed into one value,
    as forkvmm does."""
    qmp = benchlib.Qmp(qmp_path)
    try:
        reply = qmp.execute("query-stats", {"target": "vcpu"})
    finally:
        qmp.close()
    vcpus = []
    for entry in reply:
        if entry.get("provider") != "kvm":
            continue
        stats = {}
        for stat in entry["stats"]:
            value = stat["value"]
            if isinstance(value, list):
                value = sum(value)
            if isinstance(value, bool) or not value:
                continue
            stats[stat["name"]] = value
        vcpus.append(stats)
    return vcpus


def sum_vcpu_stats(vcpus):
    total = {}
    for stats in vcpus:
        for name, value in stats.items():
            total[name] = total.get(name, 0) + value
    return total


def signal_group(process, number):
    """Sends signal `number` to the process group that `process` leads."""
    try:
        os.killpg(process.pid, number)
    except ProcessLookupError:
        pass


def run_vmm(command, work, label, timeout, read_kvm_stats):
    """Starts `command`, waits until it exits or `timeout` passes, and
    returns the marker times relative to the start. When the console shows
    "Run /init", `read_kvm_stats()` reads KVM's per-vCPU statistics."""
    console_path = os.path.join(work, f"{label}.console.txt")
    stderr_path = os.path.join(work, f"{label}.stderr.txt")
    kvm_stats = None
    kvm_stats_error = None
    with open(stderr_path, "wb") as stderr:
        start = time.monotonic()
        # A session of its own, so that stopping it also stops the QEMU that
        # `timeout` started: killing only `timeout` left QEMU running.
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=stderr, start_new_session=True)
        reader = ConsoleReader(process.stdout, [INIT_LINE, READY_LINE, PANIC_LINE],
                               console_path)
        deadline = start + timeout
        stopped_after_panic = False
        kvm_error_seen = None
        while process.poll() is None and time.monotonic() < deadline:
            if kvm_error_seen is None and KVM_ERROR_LINE in benchlib.read_text(stderr_path):
                kvm_error_seen = time.monotonic()
            stop_from = reader.seen.get(PANIC_LINE) or kvm_error_seen
            if stop_from is not None and time.monotonic() > stop_from + PANIC_GRACE_SECONDS:
                signal_group(process, signal.SIGTERM)
                stopped_after_panic = True
                break
            if kvm_stats is None and kvm_stats_error is None and INIT_LINE in reader.seen:
                try:
                    kvm_stats = read_kvm_stats()
                except (benchlib.QmpError, OSError) as error:
                    # The guest may have reset the VM in the meantime.
                    kvm_stats_error = str(error)
            time.sleep(0.05)
        if not stopped_after_panic and process.poll() is None:
            signal_group(process, signal.SIGKILL)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            signal_group(process, signal.SIGKILL)
            process.wait()
        # Whatever is left of the group, such as QEMU after `timeout` exited.
        signal_group(process, signal.SIGKILL)
        end = time.monotonic()
        reader.thread.join(timeout=10)
    stderr_text = benchlib.read_text(stderr_path)

    def since_start(t):
        return None if t is None else t - start

    return {
        "label": label,
        "exit_status": process.returncode,
        "first_output_s": since_start(reader.first_output),
        "init_s": since_start(reader.seen.get(INIT_LINE)),
        "ready_s": since_start(reader.seen.get(READY_LINE)),
        "panic_s": since_start(reader.seen.get(PANIC_LINE)),
        "exit_s": end - start,
        # Stopped PANIC_GRACE_SECONDS after a guest panic or a KVM internal error.
        "stopped_after_panic": stopped_after_panic,
        "kvm_internal_error": KVM_ERROR_LINE in stderr_text,
        "stats": parse_stats(stderr_text),
        "kvm_stats_at_init": kvm_stats,
        "kvm_stats_error": kvm_stats_error,
        "console": console_path,
        "kernel_command_line": kernel_command_line(console_path),
    }


def kernel_command_line(console_path):
    for line in benchlib.read_text(console_path).splitlines():
        if "Kernel command line:" in line:
            return line.split("Kernel command line:", 1)[1].strip()
    return None


def forkvmm_command(args, config, cmdline, overlay):
    command = [args.forkvmm, "run", "--runtime-dir", args.runtime_dir, "--no-stdin", "--stats",
               "--kernel", args.kernel, "--cmdline", cmdline, "--cpus", str(args.cpus),
               "--mem", f"{args.mem_mib}M"]
    if config == "initramfs":
        command += ["--initrd", args.initrd]
    else:
        command += ["--no-initrd", "--disk", f"{overlay},format=qcow2"]
    return command


def qemu_command(args, config, cmdline, overlay, cpu_flags, qmp_path):
    # No network: -nodefaults creates no NIC. microvm with acpi=off puts the
    # virtio-mmio devices on the kernel command line itself.
    command = ["timeout", str(QEMU_TIMEOUT_SECONDS), "qemu-system-x86_64",
               "-M", "microvm,acpi=off", "-enable-kvm", "-cpu", cpu_flags,
               "-smp", str(args.cpus), "-m", f"{args.mem_mib}M",
               "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
               "-serial", "stdio", "-kernel", args.kernel, "-append", cmdline,
               "-qmp", f"unix:{qmp_path},server=on,wait=off"]
    if config == "initramfs":
        command += ["-initrd", args.initrd]
    else:
        command += ["-drive", f"file={overlay},format=qcow2,if=none,id=root",
                    "-device", "virtio-blk-device,drive=root"]
    return command


def make_overlay(args, work, label):
    overlay = os.path.join(work, f"{label}.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", args.rootfs, "-F", "raw",
                    overlay], check=True)
    return overlay


def cpuid_leaves(text):
    return [line for line in text.splitlines() if line.startswith("cpuid: leaf")]


def qemu_cpuid_leaves(args, work, cpu_flags, label):
    debugcon = os.path.join(work, f"cpuid-{label}.debugcon.txt")
    subprocess.run(["timeout", "120", "qemu-system-x86_64", "-M", "microvm", "-enable-kvm",
                    "-cpu", cpu_flags, "-m", "64", "-nodefaults", "-no-user-config",
                    "-display", "none", "-no-reboot", "-kernel", args.cpuid_guest,
                    "-device", "isa-debug-exit,iobase=0xf4,iosize=4",
                    "-debugcon", f"file:{debugcon}"], capture_output=True, timeout=150)
    return cpuid_leaves(benchlib.read_text(debugcon))


def check_cpuid(args, work, cpu_flags):
    """Runs the cpuid guest under forkvmm, under QEMU with `cpu_flags` and,
    as a control, under QEMU with plain `host`. The comparison is informative
    only where the control differs. Where CPUID from ring 3 does not reach KVM
    (kvm_pvm runs ring 3 natively), all three read the host's CPUID."""
    forkvmm_run = subprocess.run([args.forkvmm, "run", "--runtime-dir", args.runtime_dir,
                                  "--no-stdin", "--kernel", args.cpuid_guest, "--mem", "64M"],
                                 capture_output=True, text=True, timeout=120)
    forkvmm_leaves = cpuid_leaves(forkvmm_run.stdout)
    qemu_leaves = qemu_cpuid_leaves(args, work, cpu_flags, "flags")
    control_leaves = qemu_cpuid_leaves(args, work, "host,-arch-capabilities", "control")
    return {
        "forkvmm": forkvmm_leaves,
        "qemu": qemu_leaves,
        "qemu_plain_host": control_leaves,
        "identical": bool(forkvmm_leaves) and forkvmm_leaves == qemu_leaves,
        "informative": control_leaves != qemu_leaves,
    }


# Kernel log lines that show which CPU features the guest kernel found.
CPU_LOG_PATTERNS = ("x86/fpu:", "Spectre", "Speculative", "MDS:", "RETBleed", "SRSO",
                    "TAA:", "MMIO Stale", "GDS:", "smpboot: CPU0", "x86/cpu:",
                    "Last level", "tsc: Detected", "Kernel command line:")


def kernel_cpu_lines(console_path):
    """Extract the guest kernel's CPU lines from a console log. Timestamps
    and forkvmm's virtio_mmio.device= parameters are dropped, because QEMU
    places its devices elsewhere."""
    lines = []
    for line in benchlib.read_text(console_path).splitlines():
        if not any(pattern in line for pattern in CPU_LOG_PATTERNS):
            continue
        text = re.sub(r"^\[\s*[\d.]+\]\s*", "", line.strip())
        text = " ".join(word for word in text.split()
                        if not word.startswith("virtio_mmio.device="))
        lines.append(text)
    return lines


def compare_kernel_cpu_lines(runs):
    """Compares the kernel's CPU lines of the first run of each VMM."""
    first = {}
    for run in runs:
        first.setdefault(run["vmm"], run)
    if len(first) < 2:
        return None
    forkvmm_lines = kernel_cpu_lines(first["forkvmm"]["console"])
    qemu_lines = kernel_cpu_lines(first["qemu"]["console"])
    return {
        "forkvmm_only": [line for line in forkvmm_lines if line not in qemu_lines],
        "qemu_only": [line for line in qemu_lines if line not in forkvmm_lines],
        "common": [line for line in forkvmm_lines if line in qemu_lines],
    }


def copy_inputs(args, work):
    """Copies the guest files into the work directory, so a guest rebuild
    during the run changes nothing."""
    inputs = os.path.join(work, "inputs")
    os.makedirs(inputs, exist_ok=True)
    for name in ("vmlinux", "initramfs.cpio", "rootfs.ext4"):
        source = os.path.join(args.guest_dir, name)
        if os.path.exists(source):
            shutil.copyfile(source, os.path.join(inputs, name))
    args.kernel = os.path.join(inputs, "vmlinux")
    args.initrd = os.path.join(inputs, "initramfs.cpio")
    args.rootfs = os.path.join(inputs, "rootfs.ext4")
    os.chmod(args.rootfs, 0o444)


def base_command_line(args, probe_report):
    """The guest's recommended command line plus, on software
    virtualization, skip_int3_selftest (the guest kernel's patch for kvm_pvm);
    forkvmm appends its profile's noxsave and clearcpuid= itself."""
    cmdline = benchlib.read_text(os.path.join(args.guest_dir, "cmdline")).strip()
    if not cmdline:
        cmdline = "console=ttyS0 reboot=k panic=-1"
    if probe_report.get("virtualization") == "software" and "skip_int3_selftest" not in cmdline:
        cmdline += " skip_int3_selftest"
    # Where guest userspace runs, init runs this and resets the VM.
    return cmdline + " forkvmm.run=true"


def summarize_runs(runs):
    summary = {}
    for vmm in ("forkvmm", "qemu"):
        selected = [run for run in runs if run["vmm"] == vmm]
        summary[vmm] = {key: benchlib.summarize([run[key] for run in selected
                                                 if run[key] is not None])
                        for key in ("first_output_s", "init_s", "ready_s", "exit_s")}
    forkvmm_init = summary["forkvmm"]["init_s"]["median"]
    qemu_init = summary["qemu"]["init_s"]["median"]
    summary["init_ratio_forkvmm_over_qemu"] = (
        forkvmm_init / qemu_init if forkvmm_init and qemu_init else None)
    for vmm in ("forkvmm", "qemu"):
        samples = [sum_vcpu_stats(run["kvm_stats_at_init"]) for run in runs
                   if run["vmm"] == vmm and run.get("kvm_stats_at_init")]
        if samples:
            names = sorted({name for sample in samples for name in sample})
            summary[vmm]["kvm_stats_at_init_median"] = {
                name: benchlib.median([sample.get(name, 0) for sample in samples])
                for name in names}
    stats = [run["stats"] for run in runs if run["vmm"] == "forkvmm" and run["stats"]]
    if stats:
        exits = {}
        for vcpus in stats:
            for vcpu in vcpus:
                for name, count in vcpu["exits"].items():
                    exits.setdefault(name, []).append(count)
        summary["forkvmm_stats_median"] = {
            "guest_s": benchlib.median([sum(v["guest_s"] for v in vcpus) for vcpus in stats]),
            "vmm_s": benchlib.median([sum(v["vmm_s"] for v in vcpus) for vcpus in stats]),
            "exits": {name: benchlib.median(counts) for name, counts in exits.items()},
        }
    return summary


def write_json(results, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(results, f, indent=1)
    os.replace(path + ".tmp", path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--forkvmm", default="build-bench/tools/forkvmm")
    parser.add_argument("--cpuid-guest", default="build-bench/bench/guests/cpuid.elf")
    parser.add_argument("--guest-dir", default=default_guest_directory(),
                        help="directory with vmlinux, initramfs.cpio, rootfs.ext4 and cmdline")
    parser.add_argument("--configs", default="initramfs,disk")
    parser.add_argument("--runs", type=int, default=3, help="boots per VMM and configuration")
    parser.add_argument("--cpus", type=int, default=1)
    parser.add_argument("--mem-mib", type=int, default=512)
    parser.add_argument("--timeout", type=float, default=900, help="seconds per boot")
    parser.add_argument("--out", default="bench/results/boot.json")
    parser.add_argument("--work-dir", help="scratch directory (default: a new one in /tmp)")
    args = parser.parse_args()
    args.forkvmm = os.path.abspath(args.forkvmm)
    args.cpuid_guest = os.path.abspath(args.cpuid_guest)
    for path in (args.forkvmm, args.cpuid_guest, os.path.join(args.guest_dir, "vmlinux")):
        if not os.path.exists(path):
            sys.exit(f"boot_bench: {path} not found; build it with bench/run.sh")

    work = args.work_dir or tempfile.mkdtemp(prefix="forkvmm-boot-bench-")
    os.makedirs(work, exist_ok=True)
    args.runtime_dir = os.path.join(work, "runtime")
    os.makedirs(args.runtime_dir, exist_ok=True)
    copy_inputs(args, work)
    probe_report = probe(args.forkvmm, args.runtime_dir)
    cpu_flags = qemu_cpu_flags(probe_report)
    cmdline = base_command_line(args, probe_report)
    extra = probe_report.get("extra_kernel_parameters", "")
    # QEMU gets forkvmm's extra parameters on its command line directly.
    qemu_cmdline = f"{cmdline} {extra}".strip()

    results = {
        "benchmark": "boot_bench",
        "command": " ".join(sys.argv),
        "machine": benchlib.machine_description(),
        "source": benchlib.source_revision(),
        "probe": {key: probe_report.get(key) for key in
                  ("virtualization", "kvm_module", "hidden_cpu_features",
                   "extra_kernel_parameters", "guest_userspace")},
        "kernel_bytes": os.path.getsize(args.kernel),
        "initramfs_bytes": os.path.getsize(args.initrd),
        "cpus": args.cpus,
        "mem_mib": args.mem_mib,
        "forkvmm_cmdline_given": cmdline,
        "qemu_cmdline_given": qemu_cmdline,
        "qemu_cpu": cpu_flags,
        "panic_grace_seconds": PANIC_GRACE_SECONDS,
        "cpuid_check": check_cpuid(args, work, cpu_flags),
        "configs": {},
    }
    check = results["cpuid_check"]
    print(f"ring-3 CPUID: forkvmm and QEMU {'identical' if check['identical'] else 'DIFFERENT'}"
          f"; {'informative' if check['informative'] else 'not informative here (ring 3 reads the host CPUID)'}",
          flush=True)

    # Rounds over configurations and VMMs, so that a run cut short still
    # has alternating samples of each. The JSON is rewritten after every
    # boot.
    configs = args.configs.split(",")
    runs = {config: [] for config in configs}
    for index in range(args.runs):
        for config in configs:
            disk_args = " root=/dev/vda rw rootfstype=ext4 init=/init" if config == "disk" else ""
            for vmm in ("forkvmm", "qemu"):
                label = f"{config}-{vmm}-{index}"
                overlay = make_overlay(args, work, label) if config == "disk" else None
                if vmm == "forkvmm":
                    command = forkvmm_command(args, config, cmdline + disk_args, overlay)
                    read_kvm_stats = functools.partial(forkvmm_kvm_stats, args.runtime_dir)
                else:
                    qmp_path = os.path.join(work, f"{label}.qmp")
                    command = qemu_command(args, config, qemu_cmdline + disk_args, overlay,
                                           cpu_flags, qmp_path)
                    read_kvm_stats = functools.partial(qemu_kvm_stats, qmp_path)
                load = benchlib.loadavg()
                run = run_vmm(command, work, label, args.timeout, read_kvm_stats)
                run.update({"vmm": vmm, "config": config, "index": index, "load_before": load,
                            "command": command})
                runs[config].append(run)
                if overlay:
                    os.unlink(overlay)
                init = f"{run['init_s']:.1f} s" if run["init_s"] is not None else "never"
                ending = ("stopped after a panic or KVM error" if run["stopped_after_panic"]
                          else "ended")
                print(f"{label}: Run /init after {init}, {ending} after {run['exit_s']:.1f} s "
                      f"(load {load:.1f})", flush=True)
                results["configs"][config] = {
                    "runs": runs[config], "summary": summarize_runs(runs[config]),
                    "kernel_cpu_lines": compare_kernel_cpu_lines(runs[config])}
                results["machine"]["loadavg_at_end"] = benchlib.loadavg()
                write_json(results, args.out)

    for config, entry in results["configs"].items():
        summary = entry["summary"]
        ratio = summary["init_ratio_forkvmm_over_qemu"]
        print(f"{config}: Run /init median forkvmm {summary['forkvmm']['init_s']['median']} s, "
              f"QEMU {summary['qemu']['init_s']['median']} s, ratio "
              f"{ratio:.2f}" if ratio else f"{config}: no ratio (a VMM never reached init)")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
