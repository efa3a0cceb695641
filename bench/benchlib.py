"""Helpers shared by boot_bench.py and fork_bench.py: a QMP client that
speaks to both QEMU and forkvmm control sockets, statistics, a description of
the machine, and waiting on files and processes."""

import json
import math
import os
import platform
import socket
import statistics
import subprocess
import time


class QmpError(RuntimeError):
    """A QMP command returned an error, or the connection failed."""


class Qmp:
    """A QMP client on a unix socket. It negotiates capabilities on connect
    and keeps the events that arrive between replies in `events`."""

    def __init__(self, path, timeout=30.0):
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(path)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                self.sock.close()
                if time.monotonic() > deadline:
                    raise QmpError(f"timed out connecting to {path}")
                time.sleep(0.005)
        self.sock.settimeout(timeout)
        self.buffer = b""
        self.events = []
        self._read_message()  # the greeting
        self.execute("qmp_capabilities")

    def _read_message(self):
        while b"\n" not in self.buffer:
            data = self.sock.recv(65536)
            if not data:
                raise QmpError("the QMP connection closed")
            self.buffer += data
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    def execute(self, command, arguments=None):
        """Sends one command and returns its "return" value; raises QmpError
        on an error reply."""
        request = {"execute": command}
        if arguments is not None:
            request["arguments"] = arguments
        self.sock.sendall(json.dumps(request).encode() + b"\n")
        while True:
            message = self._read_message()
            if "event" in message:
                self.events.append(message)
                continue
            if "error" in message:
                raise QmpError(f"{command}: {message['error'].get('desc', message['error'])}")
            return message.get("return")

    def close(self):
        self.sock.close()


def median(values):
    return statistics.median(values) if values else None


def percentile(values, fraction):
    """Return the nearest-rank percentile: the smallest value with at least
    `fraction` of the values at or below it."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def summarize(values):
    """Median, 90th percentile, minimum, maximum and count of `values`."""
    return {
        "median": median(values),
        "p90": percentile(values, 0.9),
        "min": min(values) if values else None,
        "max": max(values) if values else None,
        "n": len(values),
    }


def kvm_module():
    for name in ("kvm_pvm", "kvm_intel", "kvm_amd"):
        if os.path.exists(f"/sys/module/{name}"):
            return name
    return "unknown"


def machine_description():
    """Describe this machine: the facts a reader needs to judge a result."""
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    with open("/proc/meminfo") as f:
        meminfo = dict(line.split(":", 1) for line in f)
    qemu = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True)
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "kvm_module": kvm_module(),
        "host_kernel": platform.release(),
        "mem_total_mib": int(meminfo["MemTotal"].split()[0]) // 1024,
        "loadavg_1_5_15": [float(x) for x in load],
        "qemu": qemu.stdout.splitlines()[0] if qemu.returncode == 0 else "not installed",
        "thp_enabled": read_text("/sys/kernel/mm/transparent_hugepage/enabled").strip(),
        "wakeup_latency_us": wakeup_latency_us(),
    }


# The paths of the product code that the benchmarks measure.
PRODUCT_PATHS = ("vmm", "devices", "memory", "snapshot", "tools", "CMakeLists.txt")


def source_revision():
    """Look up the commit of the checkout this script runs from and the
    product files that differ from it, so a result names the code it
    measured."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def git(*arguments):
        result = subprocess.run(["git", "-C", root, *arguments], capture_output=True, text=True)
        return result.stdout.rstrip() if result.returncode == 0 else None

    changed = git("status", "--porcelain", "--", *PRODUCT_PATHS)
    return {
        "commit": git("rev-parse", "HEAD"),
        "uncommitted_product_files": changed.splitlines() if changed else [],
    }


def wakeup_latency_us(samples=200, sleep_s=0.001):
    """Measure how late a 1 ms sleep wakes up, in microseconds. It shows how
    long a runnable thread waits for a CPU on this machine right now."""
    late = []
    for _ in range(samples):
        start = time.monotonic()
        time.sleep(sleep_s)
        late.append((time.monotonic() - start - sleep_s) * 1e6)
    return summarize(late)


def schedstat_ms(pid, tid=None):
    """CPU time and run-queue wait of a thread so far, in milliseconds, from
    /proc/<pid>/task/<tid>/schedstat; None if it is gone."""
    try:
        with open(f"/proc/{pid}/task/{tid or pid}/schedstat") as f:
            on_cpu, waiting, _ = f.read().split()
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return None
    return {"on_cpu_ms": int(on_cpu) / 1e6, "run_queue_wait_ms": int(waiting) / 1e6}


def loadavg():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def read_text(path):
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def wait_for_text(path, text, timeout, process=None):
    """Waits until file `path` contains `text`; returns the monotonic time at
    which it was first seen. Raises TimeoutError, or RuntimeError if
    `process` exits first."""
    deadline = time.monotonic() + timeout
    while True:
        if text in read_text(path):
            return time.monotonic()
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process {process.pid} exited ({process.returncode}) before "
                               f"{path} showed {text!r}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {text!r} in {path}")
        time.sleep(0.01)


def process_alive(pid):
    """True while `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return fields[0] != "Z"


def wait_for_exit(pid, timeout):
    deadline = time.monotonic() + timeout
    while process_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def smaps_rollup_kib(pid):
    """Pss, Rss and private bytes (KiB) of process `pid` from
    /proc/<pid>/smaps_rollup."""
    values = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[2] == "kB":
                values[parts[0].rstrip(":")] = int(parts[1])
    return {
        "pss": values.get("Pss", 0),
        "rss": values.get("Rss", 0),
        "private": values.get("Private_Clean", 0) + values.get("Private_Dirty", 0),
        "anon_huge": values.get("AnonHugePages", 0),
    }


def page_table_kib(pid):
    """Return VmPTE of process `pid`, the memory of its page tables, in KiB."""
    for line in read_text(f"/proc/{pid}/status").splitlines():
        if line.startswith("VmPTE:"):
            return int(line.split()[1])
    return 0


def mem_available_kib():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1])
    return 0
