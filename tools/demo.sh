#!/usr/bin/env bash
# The main job: boot the project's Linux guest with 2 vCPUs from an ext4 root
# on a qcow2 overlay, fork it while it runs, and show parent and child
# continuing independently, each on its own console (lines prefixed [parent]
# and [child]) and its own disk overlay.
#
# Where the host runs guest userspace, the guest runs a small workload that
# prints ticks with a fresh random id each second, the fork happens after the
# second tick, and each VM then prints its own ticks, `uname -a` and `nproc`.
# Where it cannot (`forkvmm probe` says why), the fork happens while the
# kernel boots, right after both CPUs are up, and both kernels boot on to init
# independently, which is as far as a Linux guest gets there. On hosts
# without hardware virtualization the child also waits, paused, until the
# parent reaches init: their guest kernel code is emulated, and two 2-vCPU
# guests at once on a small machine starve each other's timer interrupts.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"

bash tools/setup-host.sh
guest=$(bash guest-kernel/build.sh | tail -n 1)
forkvmm=$(bash tools/build.sh | tail -n 1)

work=$(mktemp -d /tmp/forkvmm-demo-XXXXXX)
export FORKVMM_RUNTIME_DIR=$work/runtime
tails=()
vms=()
cleanup() {
  for vm in "${vms[@]}"; do "$forkvmm" kill "$vm" --timeout 2 >/dev/null 2>&1 || true; done
  for pid in "${tails[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# Prints the log file as it grows, each line prefixed with a label.
follow() {
  tail -n +1 -F "$2" 2>/dev/null | sed -u "s/^/[$1] /" &
  tails+=($!)
}

# Waits until the file contains the text, for at most the given seconds.
wait_for() {
  local file=$1 text=$2 seconds=$3
  for ((i = 0; i < seconds * 5; i++)); do
    if grep -qF -- "$text" "$file" 2>/dev/null; then return 0; fi
    sleep 0.2
  done
  echo "demo: '$text' did not appear in $file within $seconds s" >&2
  return 1
}

probe=$("$forkvmm" probe --json)
hardware=$(python3 -c 'import json,sys; print(int(json.load(sys.stdin)["virtualization"] == "hardware"))' <<<"$probe")
userspace=$(python3 -c 'import json,sys; print(int(json.load(sys.stdin)["guest_userspace"]["supported"]))' <<<"$probe")
reason=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["guest_userspace"]["reason"])' <<<"$probe")
echo "demo: guest $guest, forkvmm $forkvmm"

qemu-img convert -O qcow2 "$guest/rootfs.ext4" "$work/base.qcow2"
"$forkvmm" img create -f qcow2 -b base.qcow2 -F qcow2 "$work/disk.qcow2" >/dev/null
cmdline="$(cat "$guest/cmdline") root=/dev/vda rw rootfstype=ext4 init=/init"
if [[ $userspace == 1 ]]; then
  # No double quotes inside: the kernel command line uses them to delimit.
  workload='i=0; while [ $i -lt 6 ]; do echo tick $i $(cat /proc/sys/kernel/random/uuid); i=$((i+1)); sleep 1; done; uname -a; nproc'
  cmdline="$cmdline forkvmm.run=\"$workload\""
  fork_after="tick 1 "
  done_line="forkvmm.run exited"
else
  fork_after="smp: Brought up 1 node, 2 CPUs"
  done_line="Run /init as init process"
fi

start=$(date +%s.%N)
parent=$("$forkvmm" run --detach --name demo-parent --cpus 2 --mem 512M --no-initrd \
  --disk "$work/disk.qcow2,format=qcow2" --cmdline "$cmdline" --serial-log "$work/parent.log")
vms+=("$parent")
follow parent "$work/parent.log"
wait_for "$work/parent.log" "$fork_after" 1800
fork_options=()
[[ $hardware == 1 ]] || fork_options+=(--paused)
child=$("$forkvmm" fork "$parent" --name demo-child --serial-log "$work/child.log" "${fork_options[@]}")
vms+=("$child")
forked=$(date +%s.%N)
echo "demo: forked VM $parent into $child $(python3 -c "print(f'{$forked - $start:.1f}')") s after boot started"
follow child "$work/child.log"
"$forkvmm" ls

wait_for "$work/parent.log" "$done_line" 1800
if [[ $hardware != 1 ]]; then
  echo "demo: the parent reached init; resuming the child $child"
  "$forkvmm" resume "$child"
fi
wait_for "$work/child.log" "$done_line" 1800
sleep 2
echo
if [[ $userspace == 1 ]]; then
  echo "demo: both VMs ran their workload on their own after the fork."
else
  echo "demo: both kernels booted to init on their own after the fork, each on its own disk overlay; guest userspace cannot run on this host: $reason."
fi
