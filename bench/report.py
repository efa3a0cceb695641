#!/usr/bin/python3
"""Print the Markdown result tables of bench/README.md from the JSON files
that fork_bench.py, boot_bench.py and disk_bench.py write, and from the
kvm_setup_bench output that run.sh saves.

Usage: bench/report.py [--fork bench/results/fork.json] [--boot bench/results/boot.json]
                       [--disk bench/results/disk.json] [--setup bench/results/kvm_setup.txt]
"""

import argparse
import json
import os


# Row labels of the forkvmm VM variants of fork_bench.py.
MODES = (("thp", "THP"), ("nothp", "4 KiB"), ("thp-nice", "THP, child setup at nice -10"))


def load(path):
    if not path or not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def source_line(results):
    source = results.get("source")
    if not source:
        return "Source: not recorded"
    changed = source["uncommitted_product_files"]
    return (f"Source: commit {(source['commit'] or 'unknown')[:12]}"
            + (f", with {len(changed)} uncommitted product files" if changed else ""))


def machine_line(machine):
    wakeup = machine.get("wakeup_latency_us")
    wakeup_text = (f"; 1 ms sleep overshoot median {wakeup['median']:.0f} us, p90 "
                   f"{wakeup['p90']:.0f} us" if wakeup else "")
    return (f"{machine['date_utc']}, {machine['cpus']} cores ({machine['cpu_model']}), "
            f"{machine['kvm_module']}, host kernel {machine['host_kernel']}, {machine['qemu']}, "
            f"load average {machine['loadavg_1_5_15'][0]:.1f} at the start and "
            f"{machine.get('loadavg_at_end', float('nan')):.1f} at the end{wakeup_text}")


def size_label(mib):
    mib = int(mib)
    return f"{mib} MiB" if mib < 1024 else f"{mib // 1024} GiB"


def latency_tables(results):
    first = next(entry["latency"] for entry in results["sizes"].values() if entry["latency"])
    forks = next(entry["ready_ms"]["n"] for mode, entry in first.items() if mode != "qemu")
    print(f"Latency, milliseconds, median / p90 ({forks} forks per row):\n")
    print("| guest RAM | pages | parent held | child running (ready_ms) | fork request round trip "
          "| QEMU migrate + incoming | QEMU / forkvmm (round trip) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for size, entry in results["sizes"].items():
        latency = entry["latency"]
        if not latency:
            continue
        qemu = latency.get("qemu", {}).get("total_ms")
        for mode, label in MODES:
            if mode not in latency:
                continue
            parent_held = latency[mode]["parent_held_ms"]
            ready = latency[mode]["ready_ms"]
            trip = latency[mode]["client_round_trip_ms"]
            qemu_text = f"{qemu['median']:.0f} / {qemu['p90']:.0f} (n={qemu['n']})" if qemu else "-"
            ratio = f"{qemu['median'] / trip['median']:.0f}x" if qemu else "-"
            print(f"| {size_label(size)} | {label} | {parent_held['median']:.2f} / "
                  f"{parent_held['p90']:.2f} | "
                  f"{ready['median']:.2f} / {ready['p90']:.2f} | "
                  f"{trip['median']:.2f} / {trip['p90']:.2f} | {qemu_text} | {ratio} |")

    print("\nPhases, milliseconds, medians. Parent: prepare (VM running), pause, capture, "
          "fork() calls. Child, from its birth: fds closed, VM restored, sockets attached; "
          "\"start + report\" is ready_ms minus the child's birth offset and its attach time "
          "(vCPU threads started, \"ok\" read by the parent):\n")
    print("| guest RAM | pages | prepare | pause | capture | fork | resume | child fds closed "
          "| child restore | child attach | start + report |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for size, entry in results["sizes"].items():
        for mode, label in MODES:
            samples = entry.get("samples", {}).get(mode)
            if not samples:
                continue

            def median_of(function):
                values = sorted(function(s) for s in samples)
                middle = len(values) // 2
                return (values[middle] if len(values) % 2
                        else (values[middle - 1] + values[middle]) / 2)

            born = lambda s: s["prepare_ms"] + s["pause_ms"] + s["capture_ms"] + s["fork_ms"]
            row = [median_of(lambda s: s["prepare_ms"]), median_of(lambda s: s["pause_ms"]),
                   median_of(lambda s: s["capture_ms"]), median_of(lambda s: s["fork_ms"]),
                   median_of(lambda s: s["parent_held_ms"] - s["pause_ms"] - s["capture_ms"]
                             - s["fork_ms"]),
                   median_of(lambda s: s["child_closed_fds_ms"]),
                   median_of(lambda s: s["child_restored_ms"] - s["child_closed_fds_ms"]),
                   median_of(lambda s: s["child_attached_ms"] - s["child_restored_ms"]),
                   median_of(lambda s: s["ready_ms"] - born(s) - s["child_attached_ms"])]
            print(f"| {size_label(size)} | {label} | " + " | ".join(f"{v:.2f}" for v in row) + " |")
            if "child_main_run_queue_wait_ms" in samples[0]:
                wait = median_of(lambda s: s["child_main_run_queue_wait_ms"])
                on_cpu = median_of(lambda s: s["child_main_on_cpu_ms"])
                # The child's life until its report, less its time on a CPU
                # and in the run queue: time it slept or blocked. schedstat
                # is read after the reply, so this can come out below zero.
                blocked = median_of(lambda s: s["ready_ms"] - born(s) - s["child_main_on_cpu_ms"]
                                    - s["child_main_run_queue_wait_ms"])
                print(f"|  | (child main thread until the reply: {on_cpu:.2f} ms on a CPU, "
                      f"{wait:.2f} ms runnable but waiting, {blocked:.2f} ms neither) "
                      "| | | | | | | | | |")



def fork_tables(results):
    print(f"Machine: {machine_line(results['machine'])}\n")
    print(f"{source_line(results)}\n")
    if any(entry["latency"] for entry in results["sizes"].values()):
        latency_tables(results)

    qemu_rows = [(size, entry["latency"]["qemu"]) for size, entry in results["sizes"].items()
                 if "qemu" in entry["latency"]]
    if qemu_rows:
        print("\nQEMU path, milliseconds, median / p90: stop + migrate to the file (source held "
              "until cont), then the second QEMU from process start to guest running:\n")
        print("| guest RAM | source held | save | incoming start to running | total |")
        print("| --- | --- | --- | --- | --- |")
        for size, qemu in qemu_rows:
            print(f"| {size_label(size)} | {qemu['parent_held_ms']['median']:.0f} / "
                  f"{qemu['parent_held_ms']['p90']:.0f} | {qemu['save_ms']['median']:.0f} | "
                  f"{qemu['incoming_ms']['median']:.0f} / {qemu['incoming_ms']['p90']:.0f} | "
                  f"{qemu['total_ms']['median']:.0f} / {qemu['total_ms']['p90']:.0f} |")

    memory_rows = [(size, entry["memory"]) for size, entry in results["sizes"].items()
                   if entry.get("memory")]
    if memory_rows:
        print("\nMemory of idle children (the guest halts between 10 Hz timer ticks), MiB. "
              "Marginal Pss: (sum of Pss over the parent and its N children, minus the "
              "parent's Pss before the fork) / N. Page tables (VmPTE) are outside Pss, and "
              "KVM's own memory per VM is outside both; only the MemAvailable drop sees it:\n")
        print("| guest RAM | pages | children | marginal Pss per child | page tables per child "
              "| private per child | children's Pss / N | parent Pss after "
              "| MemAvailable drop / N (noisy) | fork of all N: parent held ms |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for size, memory in memory_rows:
            for mode, label in MODES:
                if mode not in memory:
                    continue
                m = memory[mode]
                page_tables = (f"{m['page_tables_per_child_kib'] / 1024:.2f}"
                               if "page_tables_per_child_kib" in m else "not recorded")
                marginal = (m["pss_sum_children_kib"] + m["parent_after"]["pss"]
                            - m["parent_before"]["pss"]) / m["children"]
                print(f"| {size_label(size)} | {label} | {m['children']} | "
                      f"{marginal / 1024:.2f} | {page_tables} | "
                      f"{m['private_per_child_kib'] / 1024:.2f} | "
                      f"{m['pss_per_child_kib'] / 1024:.2f} | "
                      f"{m['parent_after']['pss'] / 1024:.1f} | "
                      f"{m['mem_available_drop_per_child_kib'] / 1024:.1f} | "
                      f"{m['fork_timing']['parent_held_ms']:.0f} |")


def boot_tables(results):
    print(f"Machine: {machine_line(results['machine'])}\n")
    print(f"{source_line(results)}\n")
    print(f"Guest: {results['cpus']} vCPU, {results['mem_mib']} MiB; QEMU -cpu "
          f"`{results['qemu_cpu']}`\n")
    print("Seconds from VMM process start, median (min-max, n):\n")
    print(f"The VMM process ends when the guest resets the VM, or is stopped "
          f"{results.get('panic_grace_seconds', 10)} s after the guest kernel's panic or a "
          f"KVM internal error.\n")
    print("| configuration | VMM | \"Run /init\" | \"forkvmm-guest: ready\" | VMM process end "
          "| forkvmm / QEMU (Run /init) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for config, entry in results["configs"].items():
        summary = entry["summary"]
        for vmm in ("forkvmm", "qemu"):
            s = summary[vmm]

            def cell(key):
                value = s[key]
                if not value["n"]:
                    return "not reached"
                return f"{value['median']:.1f} ({value['min']:.1f}-{value['max']:.1f}, {value['n']})"

            ratio = summary.get("init_ratio_forkvmm_over_qemu")
            ratio_text = f"{ratio:.2f}" if (vmm == "forkvmm" and ratio) else ""
            print(f"| {config} | {vmm} | {cell('init_s')} | {cell('ready_s')} | {cell('exit_s')} "
                  f"| {ratio_text} |")
    print("\nforkvmm --stats, medians over the forkvmm runs (whole run, to the guest's reset):\n")
    print("| configuration | s in guest (KVM_RUN) | s in VMM | exits by reason |")
    print("| --- | --- | --- | --- |")
    for config, entry in results["configs"].items():
        stats = entry["summary"].get("forkvmm_stats_median")
        if not stats:
            continue
        exits = ", ".join(f"{name} {count:.0f}" for name, count in
                          sorted(stats["exits"].items(), key=lambda item: -item[1]))
        print(f"| {config} | {stats['guest_s']:.1f} | {stats['vmm_s']:.2f} | {exits} |")

    print("\nKVM's statistics of the vCPUs (summed over vCPUs) when \"Run /init\" appeared, "
          "medians. Counters that are zero for both VMMs are left out; `*_ns` are "
          "nanoseconds:\n")
    print("| configuration | statistic | forkvmm | QEMU |")
    print("| --- | --- | --- | --- |")
    for config, entry in results["configs"].items():
        forkvmm = entry["summary"]["forkvmm"].get("kvm_stats_at_init_median", {})
        qemu = entry["summary"]["qemu"].get("kvm_stats_at_init_median", {})
        names = sorted(set(forkvmm) | set(qemu),
                       key=lambda name: -max(forkvmm.get(name, 0), qemu.get(name, 0)))
        for name in names:
            values = [forkvmm.get(name), qemu.get(name)]
            cells = [f"{value:,.0f}" if value is not None else "-" for value in values]
            print(f"| {config} | {name} | {cells[0]} | {cells[1]} |")


def disk_tables(results):
    print(f"Machine: {machine_line(results['machine'])}\n")
    print(f"{source_line(results)}\n")
    print(f"Images: {results['image_mib']} MiB, {results['cluster_bytes'] // 1024} KiB "
          f"clusters, on {results['work_dir_file_system']} (page cache); "
          f"{results['qemu_img']} with `-t writeback -i io_uring`.\n")
    print("Seconds per run, median (min-max, n); requests per second from the medians:\n")
    print("| case | requests | forkvmm qcow2_io_bench | qemu-img bench | forkvmm req/s "
          "| qemu-img req/s | forkvmm time / qemu-img time |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for case, entry in results["cases"].items():
        cells = []
        for tool in ("forkvmm", "qemu-img"):
            s = entry["summary"][tool]
            cells.append(f"{s['median']:.3f} ({s['min']:.3f}-{s['max']:.3f}, {s['n']})")
        rates = [f"{entry['requests'] / entry['summary'][tool]['median']:,.0f}"
                 for tool in ("forkvmm", "qemu-img")]
        print(f"| {case} | {entry['requests']} | {cells[0]} | {cells[1]} | {rates[0]} "
              f"| {rates[1]} | {entry['forkvmm_over_qemu_img']:.2f} |")


def load_setup(path):
    """Reads kvm_setup.txt: a comment line, then one JSON object per run."""
    if not path or not os.path.exists(path):
        return None
    with open(path) as f:
        header = f.readline().lstrip("# ").strip()
        text = f.read()
    decoder = json.JSONDecoder()
    runs = []
    position = 0
    while True:
        while position < len(text) and text[position].isspace():
            position += 1
        if position >= len(text):
            break
        run, position = decoder.raw_decode(text, position)
        runs.append(run)
    return header, runs


def setup_tables(setup):
    header, runs = setup
    print(f"Run: {header}\n")
    steps = list(runs[0]["steps"])
    print("Milliseconds, wall-clock median / CPU median (p90 in results/kvm_setup.txt):\n")
    print("| guest RAM | pages | runs | " + " | ".join(steps) + " |")
    print("| --- | --- | --- | " + " | ".join("---" for _ in steps) + " |")
    for run in runs:
        cells = [f"{run['steps'][step]['wall_median_ms']:.2f} / "
                 f"{run['steps'][step]['cpu_median_ms']:.2f}" for step in steps]
        pages = "THP" if run["hugepages"] else "4 KiB"
        print(f"| {size_label(run['mem_mib'])} | {pages} | {run['runs']} | " + " | ".join(cells)
              + " |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fork", default="bench/results/fork.json")
    parser.add_argument("--boot", default="bench/results/boot.json")
    parser.add_argument("--disk", default="bench/results/disk.json")
    parser.add_argument("--setup", default="bench/results/kvm_setup.txt")
    args = parser.parse_args()
    fork = load(args.fork)
    if fork:
        print("## Fork\n")
        fork_tables(fork)
    boot = load(args.boot)
    if boot:
        print("\n## Boot\n")
        boot_tables(boot)
    disk = load(args.disk)
    if disk:
        print("\n## qcow2 I/O\n")
        disk_tables(disk)
    setup = load_setup(args.setup)
    if setup:
        print("\n## KVM setup\n")
        setup_tables(setup)


if __name__ == "__main__":
    main()
