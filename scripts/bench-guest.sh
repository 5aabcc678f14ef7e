#!/usr/bin/env bash
# Runs the same fio jobs in a guest against our device (run-vm.sh --server) and QEMU's built-in
# virtio-scsi (run-vm.sh --builtin), and prints IOPS side by side.
#
# Usage: scripts/bench-guest.sh [OPTIONS]
#   --targets LIST      comma-separated, from: ours, builtin (default ours,builtin)
#   --backends LIST     comma-separated, from: null, file (default null,file)
#   --runtime S         seconds each fio job measures (default 15), after a 2 s ramp
#   --smp N             guest vCPUs (default 2)
#   --queues N          request queues (default: smp)
#   --iothreads N       iothreads, for both targets (default: each target's own, 1 for the
#                       built-in one; our server runs its queues on its main loop unless given)
#   --numjobs N         fio jobs per test, each on its own CPU's queue (default 1)
#   --server-args ARGS  extra arguments for our server, e.g. '--poll-max-ns 0'
#   --file PATH         the file backend's image (default: a sparse temporary 1 GiB file)
#   --json PATH         where the results go (default target/bench-guest.json in the workspace)
# Jobs (libaio, direct=1, on /dev/sda): randread 4k qd64, randwrite 4k qd64, read 128k qd16.
# One guest boots per backend and target and runs every job; the order of the targets alternates
# from one backend to the next, so neither always runs on a warmer host.
set -euo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/common.sh
. "$script_dir/common.sh"
repo_root=$(dirname "$script_dir")

die() {
    echo "bench-guest: $*" >&2
    exit 1
}

targets=ours,builtin
backends=null,file
runtime=15
ramp=2
smp=2
queues=
iothreads=
numjobs=1
server_args=
image=
json_out=$repo_root/target/bench-guest.json

while [ "$#" -gt 0 ]; do
    case $1 in
        --targets) need_value "$@"; targets=$2; shift ;;
        --backends) need_value "$@"; backends=$2; shift ;;
        --runtime) need_value "$@"; runtime=$2; shift ;;
        --smp) need_value "$@"; smp=$2; shift ;;
        --queues) need_value "$@"; queues=$2; shift ;;
        --iothreads) need_value "$@"; iothreads=$2; shift ;;
        --numjobs) need_value "$@"; numjobs=$2; shift ;;
        --server-args) need_value "$@"; server_args=$2; shift ;;
        --file) need_value "$@"; image=$2; shift ;;
        --json) need_value "$@"; json_out=$2; shift ;;
        -h | --help)
            usage
            exit 0
            ;;
        *) die "unknown argument '$1' (try --help)" ;;
    esac
    shift
done
for number in "$runtime" "$smp" "$numjobs" ${queues:+"$queues"} ${iothreads:+"$iothreads"}; do
    [[ $number =~ ^[0-9]+$ ]] || die "'$number' is not a number"
done
queues=${queues:-$smp}
IFS=, read -r -a target_list <<<"$targets"
IFS=, read -r -a backend_list <<<"$backends"
for target in "${target_list[@]}"; do
    case $target in ours | builtin) ;; *) die "unknown target '$target' (ours, builtin)" ;; esac
done
for backend in "${backend_list[@]}"; do
    case $backend in null | file) ;; *) die "unknown backend '$backend' (null, file)" ;; esac
done

if ! command -v jq >/dev/null; then
    echo "bench-guest: installing jq" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q jq >/dev/null ||
        die "jq is needed to read fio's JSON output and could not be installed"
fi

# name rw bs iodepth
jobs=(
    "randread-4k-qd64 randread 4k 64"
    "randwrite-4k-qd64 randwrite 4k 64"
    "read-128k-qd16 read 128k 16"
)

work=$(mktemp -d "${VUS_TMPDIR:-/var/tmp}/vus-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT
if [ -z "$image" ]; then
    image=$work/disk.raw
    truncate -s 1G "$image"
fi

guest_script='set -e'
for job in "${jobs[@]}"; do
    read -r name rw bs depth <<<"$job"
    guest_script+="
fio --name=$name --filename=/dev/sda --ioengine=libaio --direct=1 --rw=$rw --bs=$bs \
--iodepth=$depth --numjobs=$numjobs --group_reporting --time_based --runtime=$runtime \
--ramp_time=$ramp --eta=never --output-format=json --output=/tmp/$name.json
echo; echo VUS-FIO-BEGIN $name
cat /tmp/$name.json
echo VUS-FIO-END $name"
done
boot_timeout=$((180 + ${#jobs[@]} * (runtime + ramp + 5)))

results=$work/results.jsonl
: >"$results"
run_one() {
    local target=$1 backend=$2 output=$work/$1-$2.console disk target_args=() status=0
    disk=$image
    [ "$backend" = null ] && disk=null
    if [ "$target" = ours ]; then
        target_args=(--server "$server_args")
    else
        target_args=(--builtin)
    fi
    echo "bench-guest: $target, $backend backend: booting and running ${#jobs[@]} jobs" >&2
    [ -z "$iothreads" ] || target_args+=(--iothreads "$iothreads")
    "$script_dir/run-vm.sh" "${target_args[@]}" --smp "$smp" --queues "$queues" \
        --disk "$disk" --timeout "$boot_timeout" -- "$guest_script" \
        >"$output" 2>&1 || status=$?
    if [ "$status" != 0 ]; then
        echo "bench-guest: the $target guest on the $backend backend failed (status $status):" >&2
        tail -n 30 "$output" | sed 's/^/  | /' >&2
        exit 1
    fi
    local name rw bs depth direction
    for job in "${jobs[@]}"; do
        read -r name rw bs depth <<<"$job"
        direction="read"
        [[ $rw == *write ]] && direction="write"
        sed -n "/^VUS-FIO-BEGIN $name\$/,/^VUS-FIO-END $name\$/p" "$output" | sed '1d;$d' |
            jq -c --arg job "$name" --arg target "$target" --arg backend "$backend" \
                --arg dir "$direction" \
                '{job: $job, backend: $backend, target: $target,
                  iops: .jobs[0][$dir].iops, bw_kib: .jobs[0][$dir].bw,
                  lat_mean_us: (.jobs[0][$dir].clat_ns.mean / 1000)}' >>"$results" ||
            die "no fio result for $name in the $target guest's output ($output)"
    done
}

for b in "${!backend_list[@]}"; do
    order=("${target_list[@]}")
    if [ $((b % 2)) = 1 ]; then
        order=()
        for ((t = ${#target_list[@]} - 1; t >= 0; t--)); do order+=("${target_list[t]}"); done
    fi
    for target in "${order[@]}"; do
        run_one "$target" "${backend_list[b]}"
    done
done

mkdir -p "$(dirname "$json_out")"
jq -s --argjson smp "$smp" --argjson queues "$queues" --argjson iothreads "${iothreads:-null}" \
    --argjson numjobs "$numjobs" --argjson runtime "$runtime" --arg server_args "$server_args" \
    '{config: {smp: $smp, queues: $queues, iothreads: $iothreads, numjobs: $numjobs,
               runtime_s: $runtime, server_args: $server_args, accel: "tcg"},
      results: .}' "$results" >"$json_out"

iops_of() {
    jq -r --arg job "$1" --arg backend "$2" --arg target "$3" \
        '[.results[] | select(.job == $job and .backend == $backend and .target == $target)
          | .iops | floor][0] // "-"' "$json_out"
}
printf '\n%-20s %-8s %12s %12s %8s\n' job backend "IOPS ours" "IOPS builtin" ratio
for backend in "${backend_list[@]}"; do
    for job in "${jobs[@]}"; do
        read -r name _ <<<"$job"
        ours=$(iops_of "$name" "$backend" ours)
        builtin=$(iops_of "$name" "$backend" builtin)
        ratio=-
        if [ "$ours" != - ] && [ "$builtin" != - ] && [ "$builtin" != 0 ]; then
            ratio=$(awk -v a="$ours" -v b="$builtin" 'BEGIN { printf "%.2f", a / b }')
        fi
        printf '%-20s %-8s %12s %12s %8s\n' "$name" "$backend" "$ours" "$builtin" "$ratio"
    done
done
echo "bench-guest: results in $json_out" >&2
