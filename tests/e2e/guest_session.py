"""Helpers for end-to-end tests that drive real forkvmm VMs.

Each test gets its own runtime directory and work directory, starts VMs with
`forkvmm run --detach`, reads their serial logs, and kills every VM it started
(by id, through forkvmm, which ends the VM's own process) when it finishes.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

SKIP = 77  # ctest's SKIP_RETURN_CODE for these tests


def skip(reason):
    print(f"SKIPPED: {reason}", flush=True)
    sys.exit(SKIP)


def kvm_unavailable_reason():
    try:
        fd = os.open("/dev/kvm", os.O_RDWR)
    except OSError as error:
        return f"/dev/kvm unavailable: {error.strerror}"
    os.close(fd)
    return None


def guest_directory():
    cache = os.environ.get("FORKVMM_CACHE") or "/var/cache/forkvmm"
    return os.path.join(cache, "guest", "current")


class Session:
    """A runtime directory and a scratch directory for one test."""

    def __init__(self, forkvmm):
        self.forkvmm = forkvmm
        self.work = tempfile.mkdtemp(prefix="forkvmm-e2e-")
        self.runtime = os.path.join(self.work, "runtime")
        os.makedirs(self.runtime)
        self.started = []

    def run(self, *args, check=True, timeout=120):
        command = [self.forkvmm, *args]
        if args and args[0] not in ("img",):
            command += ["--runtime-dir", self.runtime]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(command)} failed ({result.returncode}): "
                                 f"{result.stderr.strip()}")
        return result

    def start(self, *run_args):
        result = self.run("run", "--detach", *run_args)
        vm_id = result.stdout.strip()
        self.started.append(vm_id)
        return vm_id

    def fork(self, vm, *fork_args):
        result = self.run("fork", vm, "--json", *fork_args)
        children = [child["id"] for child in json.loads(result.stdout)["children"]]
        self.started.extend(children)
        return children

    def serial_log_path(self, vm_id):
        return os.path.join(self.runtime, vm_id, "serial.log")

    def serial_log(self, vm_id):
        try:
            with open(self.serial_log_path(vm_id), "rb") as log:
                return log.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def ended_reason(self, vm_id):
        """Returns why the VM's process has ended, or None while it runs."""
        if os.path.isdir(os.path.join(self.runtime, vm_id)):
            return None
        failed_log = os.path.join(self.runtime, f"{vm_id}.failed.log")
        if os.path.exists(failed_log):
            with open(failed_log, errors="replace") as log:
                return "it failed; its VMM log ends:\n" + tail(log.read(), 5)
        return "its process ended"

    def vcpu_positions(self, vm_id):
        """Returns each vCPU's RIP and privilege level, for failure messages."""
        reply = self.run("qmp", vm_id, "query-cpus-fast", check=False).stdout
        try:
            cpus = json.loads(reply)
        except ValueError:
            return [f"query-cpus-fast failed: {reply.strip()[:200]}"]
        if not isinstance(cpus, list):
            return [f"query-cpus-fast returned {reply.strip()[:200]}"]
        return [f"cpu {cpu.get('cpu-index')} rip {cpu.get('rip')} cpl {cpu.get('cpl')}"
                for cpu in cpus]

    def wait_for(self, vm_id, text, timeout, saved_logs=None, silence_limit=600):
        """Waits until `text` appears in the VM's serial log and returns the
        log. Fails early when the VM ends, or when its console stays silent
        for `silence_limit` seconds: on software virtualization, a heavily
        loaded host can leave a 2-vCPU guest handling only timer ticks."""
        deadline = time.monotonic() + timeout
        last_size, last_growth = -1, time.monotonic()
        while time.monotonic() < deadline:
            log = self.serial_log(vm_id)
            if saved_logs is not None:
                saved_logs[vm_id] = log
            if text in log:
                return log
            now = time.monotonic()
            if len(log) != last_size:
                last_size, last_growth = len(log), now
            ended = self.ended_reason(vm_id)
            if ended:
                raise AssertionError(f"VM {vm_id} ended before '{text}' appeared: {ended}\n"
                                     f"last console lines:\n{tail(self.serial_log(vm_id))}")
            if now - last_growth > silence_limit:
                positions = self.vcpu_positions(vm_id)
                raise AssertionError(f"VM {vm_id}: console silent for {silence_limit} s "
                                     f"before '{text}' ({'; '.join(positions)}); host load "
                                     f"{os.getloadavg()[0]:.1f}; last lines:\n{tail(log)}")
            time.sleep(0.2)
        raise AssertionError(f"VM {vm_id}: '{text}' did not appear within {timeout} s; "
                             f"last lines:\n{tail(self.serial_log(vm_id))}")

    def close(self, keep=False):
        """Kills the VMs this session started; keeps the work directory
        (consoles, images) for inspection when `keep` is set."""
        for vm_id in reversed(self.started):
            self.run("kill", vm_id, "--timeout", "5", check=False)
        if keep:
            print(f"kept the test's files in {self.work}", flush=True)
        else:
            shutil.rmtree(self.work, ignore_errors=True)


def tail(text, lines=15):
    return "\n".join(text.splitlines()[-lines:])
