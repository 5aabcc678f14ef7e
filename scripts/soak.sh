#!/usr/bin/env bash
# Soak test, run by hand: one server serves one guest for a long time while the guest writes and
# verifies data with fio on every request queue, and between rounds removes the controller from
# its PCI bus and rescans it (a device reset and a fresh driver probe each time). Every interval
# the host samples the server's RSS, open fds and threads. At the end it reports the rounds, the
# rounds with fio errors, the corrupt blocks fio's verify found, the server's warnings, and RSS,
# fds and threads over time.
#
# Usage: scripts/soak.sh [--minutes N (default 10)] [--queues N (default 2)] [--iothreads N
#        (default 2)] [--smp N (default 2)] [--disk-mib N (default 512)] [--sample-s N (default 10)]
#        [--between-rounds 'HOST COMMAND']
# --between-rounds runs a host command after each guest round, with the server's control socket
# in $VUS_SOAK_CONTROL: the hook for LUN hot add/remove, for example
# '"$VUS_SERVER_BIN" ctl "$VUS_SOAK_CONTROL" add-disk null,size=64M,lun=1' (the server is started
# with --control-socket only when this is given).
# Exit status: 0 when every round passed with no corrupt block, 1 otherwise.
# Environment: VUS_SERVER_BIN (server binary; default: the one cargo builds),
# VUS_TMPDIR (scratch space for the image, /var/tmp by default), and run-vm.sh's.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/common.sh
source "$repo_root/scripts/common.sh"
die() {
    echo "soak: $*" >&2
    exit 2
}

minutes=10 queues=2 iothreads=2 smp=2 disk_mib=512 sample_s=10 between_rounds=
while [ "$#" -gt 0 ]; do
    case $1 in
        --minutes) need_value "$@"; minutes=$2; shift ;;
        --queues) need_value "$@"; queues=$2; shift ;;
        --iothreads) need_value "$@"; iothreads=$2; shift ;;
        --smp) need_value "$@"; smp=$2; shift ;;
        --disk-mib) need_value "$@"; disk_mib=$2; shift ;;
        --sample-s) need_value "$@"; sample_s=$2; shift ;;
        --between-rounds) need_value "$@"; between_rounds=$2; shift ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown option $1 (try --help)" ;;
    esac
    shift
done
for value in "$minutes" "$queues" "$iothreads" "$smp" "$disk_mib" "$sample_s"; do
    case $value in '' | *[!0-9]*) die "'$value' is not a number" ;; esac
done

build_server
server_bin=$VUS_SERVER_BIN
work=$(mktemp -d "${VUS_TMPDIR:-/var/tmp}/vus-soak.XXXXXX")
socket=$work/vus.sock
image=$work/disk.img
truncate -s "${disk_mib}M" "$image"
server_args=(--socket "$socket" --disk "path=$image,cache=none" --num-queues "$queues"
    --log-format json --log-file "$work/server.log")
for ((i = 0; i < iothreads; i++)); do
    server_args+=(--iothread "io$i")
done
[ -z "$between_rounds" ] || server_args+=(--control-socket "$work/control.sock")

server_pid='' sampler_pid=''
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
    [ -z "$sampler_pid" ] || kill "$sampler_pid" 2>/dev/null || true
    [ -z "$server_pid" ] || kill "$server_pid" 2>/dev/null || true
    wait 2>/dev/null || true
}
trap cleanup EXIT

"$server_bin" "${server_args[@]}" </dev/null >"$work/server.stderr" 2>&1 &
server_pid=$!
for _ in $(seq 100); do
    [ -S "$socket" ] && break
    kill -0 "$server_pid" 2>/dev/null || die "the server exited: $(cat "$work/server.stderr")"
    sleep 0.1
done
[ -S "$socket" ] || die "the server never listened on $socket"

sample() {
    local started=$SECONDS
    echo "elapsed_s rss_kib fds threads" >"$work/usage.tsv"
    while kill -0 "$server_pid" 2>/dev/null; do
        local rss fds threads
        rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$server_pid/status" 2>/dev/null || echo 0)
        fds=$(find "/proc/$server_pid/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
        threads=$(find "/proc/$server_pid/task" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
        echo "$((SECONDS - started)) $rss $fds $threads" >>"$work/usage.tsv"
        sleep "$sample_s"
    done
}
sample &
sampler_pid=$!

# The guest loops until its deadline: one fio write+verify pass per queue's CPU, then a PCI
# remove and rescan of the controller, waiting for the disk to come back.
guest_script=$(cat <<GUEST
deadline=\$(( \$(cut -d. -f1 /proc/uptime) + $minutes * 60 ))
round=0
controller=
for d in /sys/bus/pci/devices/*; do
    [ "\$(cat \$d/vendor)" = 0x1af4 ] && [ "\$(cat \$d/device)" = 0x1048 ] && controller=\$d
done
[ -n "\$controller" ] || { echo "SOAK no virtio-scsi controller"; exit 1; }
while [ "\$(cut -d. -f1 /proc/uptime)" -lt "\$deadline" ]; do
    round=\$((round + 1))
    status=0
    fio --name=soak --filename=/dev/sda --direct=1 --ioengine=libaio --rw=randwrite --bs=4k \
        --iodepth=16 --numjobs=$smp --cpus_allowed=0-$((smp - 1)) --cpus_allowed_policy=split --size=$((disk_mib / (smp + 1)))M \
        --offset_increment=$((disk_mib / (smp + 1)))M --verify=crc32c --verify_fatal=0 \
        --randseed=\$round --group_reporting >/tmp/fio.out 2>&1 || status=\$?
    corrupt=\$(grep -c -E 'bad magic|verify failed' /tmp/fio.out || true)
    errors=\$(grep -c -i -E 'err=[ ]*[1-9]|I/O error' /tmp/fio.out || true)
    echo "SOAK round=\$round fio_status=\$status corrupt=\$corrupt errors=\$errors"
    [ "\$status" = 0 ] || tail -n 20 /tmp/fio.out
    echo 1 > \$controller/remove
    echo 1 > /sys/bus/pci/rescan
    waited=0
    while [ ! -b /dev/sda ] && [ \$waited -lt 300 ]; do sleep 0.1; waited=\$((waited + 1)); done
    [ -b /dev/sda ] || { echo "SOAK the disk did not come back after rescan"; exit 1; }
    echo "SOAK reset=\$round"
done
echo "SOAK done rounds=\$round"
GUEST
)

echo "soak: ${minutes} min, $queues queues, $iothreads iothreads, $smp vCPUs; work dir $work"
guest_status=0
(
    while kill -0 "$server_pid" 2>/dev/null; do
        if [ -n "$between_rounds" ] && [ -f "$work/round-done" ]; then
            rm -f "$work/round-done"
            VUS_SOAK_CONTROL=$work/control.sock bash -c "$between_rounds" || echo "soak: --between-rounds failed" >&2
        fi
        sleep 1
    done
) &
hook_pid=$!
"$repo_root/scripts/run-vm.sh" --socket "$socket" --smp "$smp" --timeout $((minutes * 60 + 300)) \
    -- "$guest_script" 2>&1 | while IFS= read -r line; do
    case $line in
        *SOAK*)
            echo "$line"
            echo "$line" >>"$work/rounds.log"
            case $line in *"SOAK reset="*) touch "$work/round-done" ;; esac
            ;;
    esac
done || guest_status=$?
kill "$hook_pid" 2>/dev/null || true

rounds=$(grep -c 'SOAK round=' "$work/rounds.log" 2>/dev/null || true)
failed=$(grep 'SOAK round=' "$work/rounds.log" 2>/dev/null | grep -c -v 'fio_status=0 ' || true)
corrupt=$(sed -n 's/.*corrupt=\([0-9]*\).*/\1/p' "$work/rounds.log" 2>/dev/null | awk '{s += $1} END {print s + 0}')
warnings=$(grep -c '"level":"WARN"' "$work/server.log" 2>/dev/null || true)
echo "soak: rounds=$rounds failed_rounds=$failed corrupt_blocks=$corrupt server_warnings=$warnings guest_status=$guest_status"
echo "soak: server usage over time (also in $work/usage.tsv):"
column -t "$work/usage.tsv" 2>/dev/null || cat "$work/usage.tsv"
awk 'NR == 2 {first = $0} NR > 1 {last = $0} END {print "soak: first sample: " first "; last sample: " last}' "$work/usage.tsv"
if [ "${rounds:-0}" -gt 0 ] && [ "$failed" = 0 ] && [ "$corrupt" = 0 ] && grep -q 'SOAK done' "$work/rounds.log"; then
    exit 0
fi
exit 1
