#!/usr/bin/python3
"""qcow2 I/O of forkvmm's block backend against `qemu-img bench`, on the
same image files.

bench/qcow2_io_bench issues the request pattern of `qemu-img bench` (COUNT
requests of SIZE bytes, DEPTH in flight, each STEP bytes after the last)
through forkvmm's qcow2 backend and io_uring. qemu-img bench runs with
`-t writeback -i io_uring`, so both go through the host page cache and
io_uring. Runs of the two alternate, on these cases:
  read-4k-qd1, read-4k-qd32  sequential 4 KiB reads of a fully allocated
                             qcow2 image (64 KiB clusters), its file cached
  write-64k-alloc            whole-cluster writes into an empty qcow2 image,
                             so each allocates a cluster
  cow-4k                     4 KiB writes, one per 64 KiB cluster, into an
                             empty overlay on a raw backing file, so each
                             copies the rest of its cluster from the backing
Each run of a write case gets a fresh copy of its image. The result is the
"Run completed in S seconds" of each tool: opening the image and the flush
when it closes are outside it, in both.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402
import report  # noqa: E402

MIB = 1 << 20
CLUSTER = 64 << 10
SECONDS_RE = re.compile(r"Run completed in ([\d.]+) seconds")
# The byte the full image holds, and the byte the write cases write.
FILL_PATTERN = "0x5a"
WRITE_PATTERN = "0xa5"


def run(command):
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}): "
                           f"{result.stderr.strip() or result.stdout.strip()}")
    return result.stdout


def make_images(work, image_mib):
    """Creates the image files the cases read or copy: a fully written
    qcow2 image, an empty one, and an empty overlay on a raw file."""
    images = {
        "full": os.path.join(work, "full.qcow2"),
        "empty": os.path.join(work, "empty.qcow2"),
        "base": os.path.join(work, "base.raw"),
        "overlay": os.path.join(work, "overlay.qcow2"),
    }
    size = f"{image_mib}M"
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", f"cluster_size={CLUSTER}",
         images["full"], size])
    run(["qemu-img", "bench", "-q", "-w", "-f", "qcow2", "-t", "writeback",
         f"--pattern={FILL_PATTERN}",
         "-c", str(image_mib * MIB // CLUSTER), "-s", str(CLUSTER), images["full"]])
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", f"cluster_size={CLUSTER}",
         images["empty"], size])
    with open(images["base"], "wb") as f:
        f.write(b"\x3c" * (image_mib * MIB))
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", f"cluster_size={CLUSTER}",
         "-b", images["base"], "-F", "raw", images["overlay"]])
    return images


def cases(image_mib):
    """Case name -> (source image, writes, request arguments). The read
    cases pass over the image twice; the write cases cover it once."""
    clusters = image_mib * MIB // CLUSTER
    reads = 2 * image_mib * MIB // 4096
    return {
        "read-4k-qd1": ("full", False, ["-c", str(reads), "-d", "1", "-s", "4096"]),
        "read-4k-qd32": ("full", False, ["-c", str(reads), "-d", "32", "-s", "4096"]),
        "write-64k-alloc": ("empty", True, ["-c", str(clusters), "-d", "1", "-s", str(CLUSTER)]),
        "cow-4k": ("overlay", True,
                   ["-c", str(clusters), "-d", "1", "-s", "4096", "-S", str(CLUSTER)]),
    }


def timed_run(tool, qcow2_io_bench, image, writes, arguments):
    """Runs one tool on `image`; returns the seconds it printed."""
    if tool == "qemu-img":
        command = ["qemu-img", "bench", "-f", "qcow2", "-t", "writeback", "-i", "io_uring"]
        if writes:
            command += ["-w", f"--pattern={WRITE_PATTERN}"]
    else:
        # Reads check the last buffers against the pattern the image holds.
        command = [qcow2_io_bench, "-f", "qcow2", "--pattern",
                   WRITE_PATTERN if writes else FILL_PATTERN]
        if writes:
            command.append("-w")
    command += [*arguments, image]
    output = run(command)
    match = SECONDS_RE.search(output)
    if not match:
        raise RuntimeError(f"{' '.join(command)} printed no run time: {output.strip()}")
    return float(match.group(1))


def copy_image(images, source, work):
    """Copies a write case's image. A copy of the overlay names the same
    backing file, which the writes never change."""
    copy = os.path.join(work, f"run-{source}.qcow2")
    shutil.copyfile(images[source], copy)
    return copy


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--qcow2-io-bench", default="build-bench/bench/qcow2_io_bench")
    parser.add_argument("--image-mib", type=int, default=256, help="virtual size of each image")
    parser.add_argument("--runs", type=int, default=5, help="runs per tool and case")
    parser.add_argument("--out", default="bench/results/disk.json")
    parser.add_argument("--work-dir", help="directory for the images (default: a new one in /tmp)")
    args = parser.parse_args()
    args.qcow2_io_bench = os.path.abspath(args.qcow2_io_bench)
    if not os.path.exists(args.qcow2_io_bench):
        sys.exit(f"disk_bench: {args.qcow2_io_bench} not found; build it with bench/run.sh")

    work = args.work_dir or tempfile.mkdtemp(prefix="forkvmm-disk-bench-")
    os.makedirs(work, exist_ok=True)
    images = make_images(work, args.image_mib)
    file_system = run(["findmnt", "-n", "-o", "FSTYPE", "--target", work]).strip()
    results = {
        "benchmark": "disk_bench",
        "command": " ".join(sys.argv),
        "machine": benchlib.machine_description(),
        "source": benchlib.source_revision(),
        "image_mib": args.image_mib,
        "cluster_bytes": CLUSTER,
        "work_dir_file_system": file_system,
        "qemu_img": run(["qemu-img", "--version"]).splitlines()[0],
        "cases": {},
    }
    samples = {case: {"forkvmm": [], "qemu-img": []} for case in cases(args.image_mib)}
    for index in range(args.runs):
        for case, (source, writes, arguments) in cases(args.image_mib).items():
            # Alternate which tool goes first, so neither always runs on a
            # page cache the other has just warmed.
            tools = ("forkvmm", "qemu-img") if index % 2 == 0 else ("qemu-img", "forkvmm")
            for tool in tools:
                image = copy_image(images, source, work) if writes else images[source]
                seconds = timed_run(tool, args.qcow2_io_bench, image, writes, arguments)
                samples[case][tool].append(seconds)
                if writes:
                    os.unlink(image)
            print(f"run {index + 1}/{args.runs} {case}: forkvmm {samples[case]['forkvmm'][-1]:.3f} s, "
                  f"qemu-img {samples[case]['qemu-img'][-1]:.3f} s", flush=True)

    for case, (source, writes, arguments) in cases(args.image_mib).items():
        count = int(arguments[arguments.index("-c") + 1])
        summary = {tool: benchlib.summarize(values) for tool, values in samples[case].items()}
        results["cases"][case] = {
            "image": source,
            "writes": writes,
            "arguments": arguments,
            "requests": count,
            "seconds": samples[case],
            "summary": summary,
            "forkvmm_over_qemu_img": summary["forkvmm"]["median"] / summary["qemu-img"]["median"],
        }
    results["machine"]["loadavg_at_end"] = benchlib.loadavg()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)
    print()
    report.disk_tables(results)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
