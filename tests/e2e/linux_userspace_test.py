#!/usr/bin/env python3
"""End-to-end, userspace half: the guest's shell, commands on its console,
a workload across a fork, and files on a forked disk.

Runs only where the host can run guest userspace; `forkvmm probe` decides,
and elsewhere the test reports "skipped" with the probe's reason.

It boots the guest from a qcow2 overlay with 2 vCPUs, waits for the ready
line, runs `uname -a; nproc` through the console socket and checks the
answer, starts a ticking workload that also writes a file, forks the VM,
sends each VM a different command, and checks that each console answers
only its own command, that both keep ticking, and that the files written
after the fork differ between the two overlays.
"""

import argparse
import json
import shutil
import socket
import subprocess
import sys
import time

import guest_session as gs

READY = "forkvmm-guest: ready"


def send_console(session, vm, text):
    path = f"{session.runtime}/{vm}/console.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as console:
        console.connect(path)
        console.sendall(text.encode())
        time.sleep(0.2)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--forkvmm", required=True)
    parser.add_argument("--qemu-img", default=shutil.which("qemu-img"))
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args()

    reason = gs.kvm_unavailable_reason()
    if reason:
        gs.skip(reason)
    session = gs.Session(args.forkvmm)
    try:
        probe = json.loads(session.run("probe", "--json").stdout)
        if not probe["guest_userspace"]["supported"]:
            gs.skip(f"guest userspace cannot run on this host: {probe['guest_userspace']['reason']}")
        if not args.qemu_img:
            gs.skip("qemu-img not found (Debian package qemu-utils)")
        guest = gs.guest_directory()
        work = session.work
        subprocess.run([args.qemu_img, "convert", "-O", "qcow2", f"{guest}/rootfs.ext4",
                        f"{work}/base.qcow2"], check=True)
        session.run("img", "create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2",
                    f"{work}/top.qcow2")
        cmdline = open(f"{guest}/cmdline").read().strip()
        cmdline += " root=/dev/vda rw rootfstype=ext4 init=/init"
        parent = session.start("--cpus", "2", "--mem", "512", "--no-initrd",
                               "--disk", f"{work}/top.qcow2,format=qcow2", "--cmdline", cmdline)
        session.wait_for(parent, READY, args.timeout)

        send_console(session, parent, "uname -a; nproc; echo done-1\n")
        log = session.wait_for(parent, "done-1\r\n", 60)
        failures = []
        if "Linux forkvmm" not in log:
            failures.append("uname -a did not print the guest's kernel")
        if "\n2\r\n" not in log.replace("\r\r", "\r"):
            failures.append("nproc did not print 2")

        send_console(session, parent,
                     "(i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done &) ; "
                     "echo started\n")
        session.wait_for(parent, "tick 3", 60)
        child = session.fork(parent)[0]

        send_console(session, parent, "echo parent > /after-fork; sync; echo wrote-parent\n")
        send_console(session, child, "echo child > /after-fork; sync; echo wrote-child\n")
        parent_log = session.wait_for(parent, "wrote-parent", 60)
        child_log = session.wait_for(child, "wrote-child", 60)
        if "wrote-child" in parent_log or "wrote-parent" in child_log:
            failures.append("a console answered the other VM's command")
        ticks_before = child_log.count("tick ")
        time.sleep(2)
        if session.serial_log(child).count("tick ") <= ticks_before:
            failures.append("the child stopped ticking after the fork")
        for vm in (parent, child):
            send_console(session, vm, "cat /after-fork\n")
        time.sleep(1)
        if "\nchild" in session.serial_log(parent) or "\nparent\r\n" in session.serial_log(child):
            failures.append("files written after the fork are shared between the VMs")

        for failure in failures:
            print(f"FAILED: {failure}")
        print("PASSED" if not failures else "")
        return 1 if failures else 0
    finally:
        session.close()


if __name__ == "__main__":
    sys.exit(main())
