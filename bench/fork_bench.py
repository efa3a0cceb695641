#!/usr/bin/python3
"""Fork latency and memory of forkvmm, against QEMU's nearest path.

For each guest RAM size, the benchmark boots the `dirty` guest
(bench/guests/dirty.c) three times: in forkvmm with transparent huge pages,
in forkvmm with --no-hugepages, and in QEMU (microvm, the same ELF through
its PVH note). Each guest writes all its RAM once and then keeps dirtying a
working set. In rounds, with only one of the three VMs running at a time, it
  - forks each forkvmm VM once over its control socket and records the
    fork reply's timing (parent_held_ms, ready_ms and the phases), then kills
    the child;
  - on some rounds, stops the QEMU VM, migrates it to a file with
    `exec:cat > FILE`, resumes it, starts a second QEMU with
    `-incoming "exec:cat FILE"` and polls query-status until that one runs.
Then, per RAM size and huge-page setting, it boots the guest idle
(dirty.wss_mb=0), forks it into N children at once and reads every child's
and the parent's /proc/<pid>/smaps_rollup.

Output: a JSON file with every sample and the summaries, a PNG plot of
latency against RAM size, and the tables of bench/report.py on stdout.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402
import report  # noqa: E402

READY = "dirty: ready"
QEMU_TIMEOUT_SECONDS = 1800


def parse_size_mib(text):
    units = {"M": 1, "G": 1024}
    if text[-1].upper() in units:
        return int(text[:-1]) * units[text[-1].upper()]
    return int(text)


class ForkvmmVm:
    """A forkvmm VM started with `run --detach` in the benchmark's runtime
    directory."""

    def __init__(self, args, work, name, mem_mib, hugepages, working_set_mib):
        self.args = args
        self.name = name
        self.serial_log = os.path.join(work, f"{name}.serial.log")
        command = [args.forkvmm, "run", "--detach", "--runtime-dir", args.runtime_dir,
                   "--name", name, "--kernel", args.guest, "--mem", f"{mem_mib}M",
                   "--cmdline", f"dirty.wss_mb={working_set_mib}",
                   "--serial-log", self.serial_log, "--no-stdin"]
        if not hugepages:
            command.append("--no-hugepages")
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed: {result.stderr.strip()}")
        self.id = result.stdout.strip().splitlines()[-1]
        self.qmp = benchlib.Qmp(os.path.join(args.runtime_dir, self.id, "control.sock"))
        self.pid = self.qmp.execute("query-forkvmm")["pid"]

    def wait_ready(self, timeout):
        benchlib.wait_for_text(self.serial_log, READY, timeout)

    def pause(self):
        self.qmp.execute("stop")

    def resume(self):
        self.qmp.execute("cont")

    def fork(self, count=1):
        """Forks the VM; returns the reply and the client-side round trip in
        milliseconds."""
        start = time.monotonic()
        reply = self.qmp.execute("fork", {"count": count})
        return reply, (time.monotonic() - start) * 1000

    def kill(self):
        self.qmp.close()
        subprocess.run([self.args.forkvmm, "kill", self.id, "--runtime-dir",
                        self.args.runtime_dir], capture_output=True, timeout=60)


def kill_children(children):
    """Stops fork children by pid (each is a VM process this benchmark
    created) and waits until they have exited."""
    for child in children:
        try:
            os.kill(child["pid"], signal.SIGTERM)
        except ProcessLookupError:
            pass
    for child in children:
        if not benchlib.wait_for_exit(child["pid"], 30):
            os.kill(child["pid"], signal.SIGKILL)
            benchlib.wait_for_exit(child["pid"], 10)


def qemu_command(args, mem_mib, qmp_path, debugcon_path, working_set_mib, incoming=None):
    # -arch-capabilities: QEMU 7.2 aborts where KVM rejects that MSR, as
    # kvm_pvm does. No network: -nodefaults creates no NIC.
    command = ["timeout", str(QEMU_TIMEOUT_SECONDS), "qemu-system-x86_64",
               "-M", "microvm", "-enable-kvm", "-cpu", "host,-arch-capabilities",
               "-m", f"{mem_mib}M", "-smp", "1",
               "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
               "-kernel", args.guest, "-append", f"dirty.wss_mb={working_set_mib}",
               "-device", "isa-debug-exit,iobase=0xf4,iosize=4",
               "-debugcon", f"file:{debugcon_path}",
               "-qmp", f"unix:{qmp_path},server=on,wait=off"]
    if incoming:
        command += ["-incoming", incoming]
    return command


class QemuVm:
    def __init__(self, args, work, name, mem_mib, working_set_mib, incoming=None):
        self.qmp_path = os.path.join(work, f"{name}.qmp")
        self.debugcon = os.path.join(work, f"{name}.debugcon.txt")
        self.stderr = open(os.path.join(work, f"{name}.stderr.txt"), "w")
        command = qemu_command(args, mem_mib, self.qmp_path, self.debugcon, working_set_mib,
                               incoming)
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL,
                                        stdout=self.stderr, stderr=self.stderr)
        self.qmp = benchlib.Qmp(self.qmp_path)

    def wait_ready(self, timeout):
        benchlib.wait_for_text(self.debugcon, READY, timeout, self.process)

    def status(self):
        return self.qmp.execute("query-status")["status"]

    def quit(self):
        try:
            self.qmp.execute("quit")
        except (benchlib.QmpError, OSError):
            pass
        self.qmp.close()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.stderr.close()


def qemu_migrate_once(args, work, source, mem_mib, round_index):
    """The QEMU path: stop, migrate to a file, resume; start a second QEMU
    from the file and wait until its guest runs. Returns the phase times in
    milliseconds."""
    path = os.path.join(work, f"migration-{round_index}.bin")
    start = time.monotonic()
    source.qmp.execute("stop")
    source.qmp.execute("migrate", {"uri": f"exec:cat > {path}"})
    deadline = time.monotonic() + 600
    while True:
        status = source.qmp.execute("query-migrate").get("status")
        if status == "completed":
            break
        if status in ("failed", "cancelled") or time.monotonic() > deadline:
            raise RuntimeError(f"QEMU migration to {path} ended as {status}")
        time.sleep(0.001)
    saved = time.monotonic()
    source.qmp.execute("cont")
    resumed = time.monotonic()
    destination = QemuVm(args, work, f"qemu-incoming-{round_index}", mem_mib,
                         args.working_set_mib, incoming=f"exec:cat {path}")
    # The source was stopped, so the destination stays paused once it has
    # loaded the state ("inmigrate" until then) and needs a cont.
    deadline = time.monotonic() + 600
    while (status := destination.status()) != "running":
        if status == "paused":
            destination.qmp.execute("cont")
            continue
        if destination.process.poll() is not None or time.monotonic() > deadline:
            destination.quit()
            raise RuntimeError(f"the incoming QEMU never ran its guest (status {status})")
        time.sleep(0.001)
    running = time.monotonic()
    file_bytes = os.path.getsize(path)
    destination.quit()
    os.unlink(path)
    return {
        "total_ms": (running - start) * 1000,
        "parent_held_ms": (resumed - start) * 1000,
        "save_ms": (saved - start) * 1000,
        "incoming_ms": (running - resumed) * 1000,
        "file_bytes": file_bytes,
    }


def fork_once(vm):
    """Forks `vm` once, records the reply, and kills the child."""
    vm.resume()
    time.sleep(0.3)  # the guest dirties its working set again
    reply, round_trip_ms = vm.fork()
    child = reply["children"][0]
    # The child's main thread has done its part once the reply is here: its
    # schedstat says how much of that time it ran and how much it waited
    # for a CPU.
    child_sched = benchlib.schedstat_ms(child["pid"])
    vm.pause()
    sample = dict(reply["timing"])
    if child_sched:
        sample["child_main_on_cpu_ms"] = child_sched["on_cpu_ms"]
        sample["child_main_run_queue_wait_ms"] = child_sched["run_queue_wait_ms"]
    sample["ready_ms"] = child["ready_ms"]
    sample["client_round_trip_ms"] = round_trip_ms
    for key, value in child.items():
        if key.startswith("child_"):
            sample[key] = value
    kill_children(reply["children"])
    return sample


# The forkvmm VMs the latency rounds fork: name -> (huge pages, nice value
# of the VM process's main thread). fork() runs on that thread, and a child
# inherits its nice value, so "thp-nice" starts each child's setup at nice
# -10. It tests how much of the child's time is waiting for a CPU.
MODES = {"thp": (True, 0), "nothp": (False, 0), "thp-nice": (True, -10)}


def measure_latency(args, work, mem_mib):
    """Rounds of forks of the forkvmm VMs, alternating with the QEMU path."""
    print(f"{mem_mib} MiB: latency", flush=True)
    boot_timeout = 120 + mem_mib / 10
    vms = {}
    for mode in args.modes.split(","):
        hugepages, nice = MODES[mode]
        vms[mode] = ForkvmmVm(args, work, f"{mode}-{mem_mib}", mem_mib, hugepages,
                              args.working_set_mib)
        if nice:
            os.setpriority(os.PRIO_PROCESS, vms[mode].pid, nice)
    qemu = None
    try:
        for vm in vms.values():
            vm.wait_ready(boot_timeout)
            vm.pause()
        if args.qemu_runs > 0:
            qemu = QemuVm(args, work, f"qemu-{mem_mib}", mem_mib, args.working_set_mib)
            qemu.wait_ready(boot_timeout)
            # QEMU 7.2 limits migration to 32 MiB/s by default.
            qemu.qmp.execute("migrate-set-parameters", {"max-bandwidth": 64 << 30})
            qemu.qmp.execute("stop")
        samples = {mode: [] for mode in [*vms, "qemu"]}
        for round_index in range(args.forks):
            for mode, vm in vms.items():
                samples[mode].append(fork_once(vm))
            if qemu is not None and round_index < args.qemu_runs:
                qemu.qmp.execute("cont")
                time.sleep(0.3)
                samples["qemu"].append(qemu_migrate_once(args, work, qemu, mem_mib, round_index))
                qemu.qmp.execute("stop")
            print(f"  {mem_mib} MiB round {round_index + 1}/{args.forks}: "
                  + ", ".join(f"{mode} ready {samples[mode][-1]['ready_ms']:.2f} ms"
                              for mode in vms)
                  + (f", qemu {samples['qemu'][-1]['total_ms']:.0f} ms"
                     if qemu is not None and round_index < args.qemu_runs else ""),
                  flush=True)
        return samples
    finally:
        for vm in vms.values():
            vm.kill()
        if qemu is not None:
            qemu.quit()


def measure_memory(args, work, mem_mib, hugepages):
    """Forks an idle guest into args.children children and reads their Pss."""
    mode = "thp" if hugepages else "nothp"
    vm = ForkvmmVm(args, work, f"idle-{mode}-{mem_mib}", mem_mib, hugepages, 0)
    children = []
    try:
        vm.wait_ready(120 + mem_mib / 10)
        time.sleep(1)
        parent_before = benchlib.smaps_rollup_kib(vm.pid)
        available_before = benchlib.mem_available_kib()
        reply, round_trip_ms = vm.fork(args.children)
        children = reply["children"]
        time.sleep(args.settle_seconds)
        child_usage = [benchlib.smaps_rollup_kib(child["pid"]) for child in children]
        child_page_tables = [benchlib.page_table_kib(child["pid"]) for child in children]
        parent_after = benchlib.smaps_rollup_kib(vm.pid)
        available_after = benchlib.mem_available_kib()
    finally:
        kill_children(children)
        vm.kill()
    count = len(child_usage)
    pss_sum_children = sum(u["pss"] for u in child_usage)
    return {
        "children": count,
        "fork_timing": reply["timing"],
        "fork_round_trip_ms": round_trip_ms,
        "pss_sum_children_kib": pss_sum_children,
        # Pss splits each shared page among the processes that map it, so
        # this falls as N grows and is not what the children cost.
        "pss_per_child_kib": pss_sum_children / count,
        # What the N children added to the sum of Pss over the parent and
        # them: the memory they cost, split evenly.
        "marginal_pss_per_child_kib":
            (pss_sum_children + parent_after["pss"] - parent_before["pss"]) / count,
        "private_per_child_kib": sum(u["private"] for u in child_usage) / count,
        "rss_per_child_kib": sum(u["rss"] for u in child_usage) / count,
        # Page tables are kernel memory, outside Pss.
        "page_tables_per_child_kib": sum(child_page_tables) / count,
        "parent_before": parent_before,
        "parent_after": parent_after,
        "mem_available_drop_per_child_kib": (available_before - available_after) / count,
    }


def summarize_latency(samples):
    summary = {}
    for mode, runs in samples.items():
        if not runs:
            continue
        summary[mode] = {key: benchlib.summarize([run[key] for run in runs])
                         for key in runs[0] if key != "file_bytes"}
    return summary


def plot(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted(int(size) for size in results["sizes"])
    figure, axis = plt.subplots(figsize=(7, 4.5))

    def series(mode, key, label, style):
        medians, lower, upper, xs = [], [], [], []
        for size in sizes:
            entry = results["sizes"][str(size)]["latency"].get(mode)
            if not entry or key not in entry:
                continue
            xs.append(size)
            medians.append(entry[key]["median"])
            lower.append(0)
            upper.append(entry[key]["p90"] - entry[key]["median"])
        if xs:
            axis.errorbar(xs, medians, yerr=[lower, upper], fmt=style, capsize=3, label=label)

    series("thp", "parent_held_ms", "forkvmm parent held (THP)", "o-")
    series("nothp", "parent_held_ms", "forkvmm parent held (4 KiB pages)", "o--")
    series("thp", "ready_ms", "forkvmm child running (THP)", "s-")
    series("nothp", "ready_ms", "forkvmm child running (4 KiB pages)", "s--")
    series("qemu", "total_ms", "QEMU migrate to file + -incoming", "^-")
    axis.set_xscale("log", base=2)
    axis.set_yscale("log")
    axis.set_xticks(sizes)
    axis.set_xticklabels([f"{s} MiB" if s < 1024 else f"{s // 1024} GiB" for s in sizes])
    axis.set_xlabel("guest RAM (all touched)")
    axis.set_ylabel("milliseconds (median, bar to p90)")
    axis.set_title(f"Fork latency, {results['machine']['cpus']} cores, "
                   f"{results['machine']['kvm_module']}")
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--forkvmm", default="build-bench/tools/forkvmm")
    parser.add_argument("--guest", default="build-bench/bench/guests/dirty.elf")
    parser.add_argument("--sizes", default="128M,512M,2G", help="guest RAM sizes")
    parser.add_argument("--forks", type=int, default=20, help="forks per VM and size")
    parser.add_argument("--modes", default="thp,nothp",
                        help="forkvmm VMs to fork, from: " + ", ".join(MODES))
    parser.add_argument("--qemu-runs", type=int, default=5,
                        help="QEMU migrate-and-restore runs per size, alternating with the forks")
    parser.add_argument("--children", type=int, default=50,
                        help="children of the idle guest for the memory measurement (0: skip)")
    parser.add_argument("--settle-seconds", type=float, default=3.0,
                        help="how long the idle children run before their memory is read")
    parser.add_argument("--working-set-mib", type=int, default=16,
                        help="MiB the running guest keeps dirtying")
    parser.add_argument("--out", default="bench/results/fork.json")
    parser.add_argument("--plot", default="bench/results/fork.png")
    parser.add_argument("--work-dir", help="scratch directory (default: a new one in /tmp)")
    args = parser.parse_args()
    args.forkvmm = os.path.abspath(args.forkvmm)
    args.guest = os.path.abspath(args.guest)
    for path in (args.forkvmm, args.guest):
        if not os.path.exists(path):
            sys.exit(f"fork_bench: {path} not found; build it with bench/run.sh")
    if benchlib.kvm_module() == "unknown" or not os.access("/dev/kvm", os.R_OK | os.W_OK):
        sys.exit("fork_bench: /dev/kvm is not usable here")

    work = args.work_dir or tempfile.mkdtemp(prefix="forkvmm-fork-bench-")
    os.makedirs(work, exist_ok=True)
    args.runtime_dir = os.path.join(work, "runtime")
    os.makedirs(args.runtime_dir, exist_ok=True)
    results = {
        "benchmark": "fork_bench",
        "command": " ".join(sys.argv),
        "machine": benchlib.machine_description(),
        "source": benchlib.source_revision(),
        "guest": os.path.basename(args.guest),
        "working_set_mib": args.working_set_mib,
        "migration_file_directory": work,
        "sizes": {},
    }
    for size in args.sizes.split(","):
        mem_mib = parse_size_mib(size)
        entry = {"load_before": benchlib.loadavg(), "latency": {}}
        if args.forks > 0:
            samples = measure_latency(args, work, mem_mib)
            entry["latency"] = summarize_latency(samples)
            entry["samples"] = samples
        if args.children > 0:
            entry["memory"] = {}
            for hugepages in (True, False):
                mode = "thp" if hugepages else "nothp"
                print(f"{mem_mib} MiB: memory of {args.children} idle children ({mode})",
                      flush=True)
                entry["memory"][mode] = measure_memory(args, work, mem_mib, hugepages)
        entry["load_after"] = benchlib.loadavg()
        results["sizes"][str(mem_mib)] = entry

    results["machine"]["loadavg_at_end"] = benchlib.loadavg()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
    plot(results, args.plot)
    print()
    report.fork_tables(results)
    print(f"\nwrote {args.out} and {args.plot}")
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
