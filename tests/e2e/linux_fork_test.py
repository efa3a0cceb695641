#!/usr/bin/env python3
"""End-to-end: boot the project's Linux guest from a qcow2 disk, fork it
mid-boot, and check that parent and child both finish booting on their own.

The guest boots with 2 vCPUs and 512 MiB, its ext4 root filesystem on a qcow2
overlay (top.qcow2) over a base image. As soon as the kernel has brought up
both CPUs (before it probes the disk or mounts its root), the test forks it.
Then it checks from each console that the kernel probed the disk, mounted
its own overlay read-write and reached "Run /init", that the child's console
starts at the fork with no line repeated from before it, that both overlays
pass `qemu-img check`, and that the frozen layer top.qcow2 did not change.

On hosts with software virtualization only (kvm_pvm), guest kernel code is
emulated and two 2-vCPU guests at once on a 2-core machine starve each
other's timer interrupts, so there the child is forked paused and resumed
once the parent has reached init; guest time stands still while it waits.

This is the kernel half. The userspace half is linux_userspace_test.py.
"""

import argparse
import glob
import hashlib
import json
import re
import shutil
import subprocess
import sys
import time

import guest_session as gs

BOOT_LINE = "Linux version"
CPUS_UP = "smp: Brought up 1 node, 2 CPUs"
DISK_PROBED = re.compile(r"virtio_blk virtio\d+: .*\[vda\] \d+ 512-byte logical blocks")
ROOT_MOUNTED = re.compile(r"EXT4-fs \(vda\): mounted filesystem")
INIT_LINE = "Run /init as init process"
TIMESTAMP = re.compile(r"^\[\s*(\d+\.\d+)\]")


def timestamps(log):
    return [float(m.group(1)) for m in map(TIMESTAMP.match, log.splitlines()) if m]


def sha256(path):
    with open(path, "rb") as image:
        return hashlib.sha256(image.read()).hexdigest()


def check_console(name, text, failures):
    if not DISK_PROBED.search(text):
        failures.append(f"{name}: the kernel did not report the virtio disk vda")
    if not ROOT_MOUNTED.search(text):
        failures.append(f"{name}: the ext4 root on vda was not mounted")
    if INIT_LINE not in text:
        failures.append(f"{name}: '{INIT_LINE}' missing")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--forkvmm", required=True)
    parser.add_argument("--qemu-img", default=shutil.which("qemu-img"))
    parser.add_argument("--timeout", type=float, default=1500,
                        help="seconds for each stage; a kernel boot under software "
                             "virtualization takes minutes")
    args = parser.parse_args()

    reason = gs.kvm_unavailable_reason()
    if reason:
        gs.skip(reason)
    if not args.qemu_img:
        gs.skip("qemu-img not found (Debian package qemu-utils)")
    guest = gs.guest_directory()
    session = gs.Session(args.forkvmm)
    passed = False
    try:
        probe = json.loads(session.run("probe", "--json").stdout)
        sequential = probe["virtualization"] != "hardware"
        work = session.work
        subprocess.run([args.qemu_img, "convert", "-O", "qcow2", f"{guest}/rootfs.ext4",
                        f"{work}/base.qcow2"], check=True)
        session.run("img", "create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2",
                    f"{work}/top.qcow2")
        cmdline = open(f"{guest}/cmdline").read().strip()
        cmdline += " root=/dev/vda rw rootfstype=ext4 init=/init"

        parent_log = f"{work}/parent.log"
        started = time.monotonic()
        parent = session.start("--name", "e2e-parent", "--cpus", "2", "--mem", "512",
                               "--no-initrd", "--disk", f"{work}/top.qcow2,format=qcow2",
                               "--cmdline", cmdline, "--serial-log", parent_log)
        print(f"booting {guest}/vmlinux as VM {parent}", flush=True)
        pre_fork = session.wait_for(parent, CPUS_UP, args.timeout)
        fork_args = ["--name", "e2e-child", "--serial-log", f"{work}/{{id}}.log"]
        if sequential:
            fork_args.append("--paused")
        child = session.fork(parent, *fork_args)[0]
        frozen_hash = sha256(f"{work}/top.qcow2")
        print(f"forked VM {parent} into {child} {time.monotonic() - started:.1f} s after "
              f"start{' (child paused until the parent reaches init)' if sequential else ''}",
              flush=True)

        session.wait_for(parent, INIT_LINE, args.timeout)
        print(f"parent reached init {time.monotonic() - started:.1f} s after start", flush=True)
        if sequential:
            session.run("resume", child)
        session.wait_for(child, INIT_LINE, args.timeout)
        print(f"child reached init {time.monotonic() - started:.1f} s after start", flush=True)

        # The guests reset themselves after init on hosts without userspace;
        # stop them in any case so the overlays are closed before checking.
        time.sleep(1)
        for vm in (child, parent):
            session.run("kill", vm, "--timeout", "30", check=False)
        parent_text = open(parent_log, errors="replace").read()
        child_text = open(f"{work}/{child}.log", errors="replace").read()

        failures = []
        check_console("parent", parent_text, failures)
        check_console("child", child_text, failures)
        if CPUS_UP not in parent_text:
            failures.append(f"parent: '{CPUS_UP}' missing")
        if BOOT_LINE in child_text or CPUS_UP in child_text:
            failures.append("child console repeats lines printed before the fork")
        pre_fork_lines = {line for line in pre_fork.splitlines() if TIMESTAMP.match(line)}
        repeated = [line for line in child_text.splitlines() if line in pre_fork_lines]
        if repeated:
            failures.append(f"child console repeats {len(repeated)} pre-fork lines, "
                            f"first: {repeated[0]!r}")
        child_times, pre_fork_times = timestamps(child_text), timestamps(pre_fork)
        if child_times and pre_fork_times and child_times[0] < pre_fork_times[-1]:
            failures.append(f"child console starts at {child_times[0]} s, before the last "
                            f"pre-fork line at {pre_fork_times[-1]} s")

        overlays = sorted(glob.glob(f"{work}/top.*.qcow2"))
        if len(overlays) != 2:
            failures.append(f"expected 2 fork overlays next to top.qcow2, found {overlays}")
        for overlay in overlays:
            check = subprocess.run([args.qemu_img, "check", overlay], capture_output=True,
                                   text=True)
            print(f"qemu-img check {overlay}: exit {check.returncode}", flush=True)
            if check.returncode != 0:
                failures.append(f"qemu-img check {overlay} failed: {check.stdout.strip()}")
        if sha256(f"{work}/top.qcow2") != frozen_hash:
            failures.append("the frozen layer top.qcow2 changed after the fork")

        for failure in failures:
            print(f"FAILED: {failure}", flush=True)
        if failures:
            print("--- parent console (tail)\n" + gs.tail(parent_text, 30))
            print("--- child console (tail)\n" + gs.tail(child_text, 30))
            return 1
        print("PASSED: parent and child each mounted their own overlay and reached init",
              flush=True)
        passed = True
        return 0
    finally:
        session.close(keep=not passed)


if __name__ == "__main__":
    sys.exit(main())
