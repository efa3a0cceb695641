#!/usr/bin/env python3
"""End-to-end: boot the project's Linux guest, fork it mid-boot, check both.

Boots the guest kernel with 2 vCPUs and 512 MiB, forks it as soon as the
kernel has brought up both CPUs (before it mounts its root filesystem and
runs init), and checks from each console that the kernel finished booting
on its own: both reach "Run /init", and the child's console starts at the
fork with no line repeated from before it.

This is the kernel half. The userspace half (ready line, commands on the
console) is linux_userspace_test.py, which runs only where the host can run
guest userspace.
"""

import argparse
import re
import sys
import time

import guest_session as gs

BOOT_LINE = "Linux version"
CPUS_UP = "smp: Brought up 1 node, 2 CPUs"
INIT_LINE = "Run /init as init process"
TIMESTAMP = re.compile(r"^\[\s*(\d+\.\d+)\]")


def timestamps(log):
    return [float(m.group(1)) for m in map(TIMESTAMP.match, log.splitlines()) if m]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--forkvmm", required=True)
    parser.add_argument("--timeout", type=float, default=1200,
                        help="seconds for each stage; a kernel boot under software "
                             "virtualization takes minutes")
    args = parser.parse_args()

    reason = gs.kvm_unavailable_reason()
    if reason:
        gs.skip(reason)
    guest = gs.guest_directory()
    session = gs.Session(args.forkvmm)
    try:
        parent_log = f"{session.work}/parent.log"
        started = time.monotonic()
        parent = session.start("--name", "e2e-parent", "--cpus", "2", "--mem", "512",
                               "--serial-log", parent_log)
        print(f"booting {guest}/vmlinux as VM {parent}", flush=True)
        pre_fork = session.wait_for(parent, CPUS_UP, args.timeout)
        forked_at = time.monotonic()
        child = session.fork(parent, "--name", "e2e-child",
                             "--serial-log", f"{session.work}/{{id}}.log")[0]
        print(f"forked VM {parent} into {child} {forked_at - started:.1f} s after start",
              flush=True)

        logs = {}
        for vm in (parent, child):
            session.wait_for(vm, INIT_LINE, args.timeout, logs)
            print(f"VM {vm} reached init {time.monotonic() - started:.1f} s after start",
                  flush=True)
        # Let both consoles settle (the guest may still print after init).
        time.sleep(1)
        parent_text = open(parent_log, errors="replace").read()
        child_text = open(f"{session.work}/{child}.log", errors="replace").read()

        failures = []
        for name, text in (("parent", parent_text), ("child", child_text)):
            if INIT_LINE not in text:
                failures.append(f"{name} console lacks '{INIT_LINE}'")
        if CPUS_UP not in parent_text:
            failures.append(f"parent console lacks '{CPUS_UP}'")
        if BOOT_LINE in child_text or CPUS_UP in child_text:
            failures.append("child console repeats lines printed before the fork")
        pre_fork_lines = set(line for line in pre_fork.splitlines() if TIMESTAMP.match(line))
        repeated = [line for line in child_text.splitlines() if line in pre_fork_lines]
        if repeated:
            failures.append(f"child console repeats {len(repeated)} pre-fork lines, "
                            f"first: {repeated[0]!r}")
        child_times = timestamps(child_text)
        pre_fork_times = timestamps(pre_fork)
        if not child_times:
            failures.append("child console has no kernel log lines")
        elif pre_fork_times and child_times[0] < pre_fork_times[-1]:
            failures.append(f"child console starts at {child_times[0]} s, before the last "
                            f"pre-fork line at {pre_fork_times[-1]} s")
        for failure in failures:
            print(f"FAILED: {failure}", flush=True)
        if failures:
            print("--- parent console (tail)\n" + gs.tail(parent_text, 30))
            print("--- child console (tail)\n" + gs.tail(child_text, 30))
            return 1
        print("PASSED: parent and child both booted to init after the fork", flush=True)
        return 0
    finally:
        session.close()


if __name__ == "__main__":
    sys.exit(main())
