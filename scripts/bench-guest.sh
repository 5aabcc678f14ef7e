#!/usr/bin/env bash
# Runs the same fio jobs in TCG guests against our device (run-vm.sh --server), QEMU's built-in
# virtio-scsi (--builtin) and vhost-user-blk served by qemu-storage-daemon (--vhost-user-blk),
# alternating the targets over several rounds, and prints the median and spread of IOPS, p50 and
# p99 latency, and the device side's CPU time per request, with the ratios ours/builtin and
# ours/vhost-user-blk. Also: time from QEMU start to the guest's first read of the disk, and a
# depth sweep on a null disk with a fixed latency.
#
# Usage: scripts/bench-guest.sh [OPTIONS]
#   --targets LIST      from ours, builtin, vhost-user-blk (default: all three)
#   --backends LIST     from null (1 GiB null-co / null disk), file (default null,file)
#   --jobs LIST         from randread-4k-qd64, randwrite-4k-qd64, randread-4k-qd1, read-128k-qd16
#                       (default: all four; libaio, direct=1, numjobs = vCPUs, group reporting)
#   --rounds N          rounds over every target and backend (default 3); the order of the
#                       targets rotates from round to round
#   --runtime S         seconds each fio job measures (default 5), after --ramp S (default 1)
#   --smp N             guest vCPUs (default 2); fio's numjobs is the same unless --numjobs N
#   --queues N          request queues of every device (default: smp)
#   --iothreads N       0, 1 or 2 iothreads for every target (default 1). 0: ours serves its
#                       queues on its main loop, QEMU and qemu-storage-daemon on their main loop.
#                       qemu-storage-daemon's vhost-user-blk export takes one iothread at most.
#   --polling on|off    adaptive polling of the iothreads (default on; off: poll-max-ns=0 and
#                       our --poll-max-ns 0)
#   --poll-max-ns NS    with --polling on, the longest polling window of every target's
#                       iothreads (QEMU's and qemu-storage-daemon's poll-max-ns, our
#                       --poll-max-ns); default: each program's own, 32768 for all three
#   --server-args ARGS  extra arguments for our server, e.g. '--aio threads' (the script sets
#                       --log-format json itself: it reads the server's per-queue counters)
#   --file PATH         the file backend's image (default: a 1 GiB file written in full once, in
#                       VUS_TMPDIR or /var/tmp; all three targets open it with O_DIRECT)
#   --sweep LIST        depths of the guest depth sweep (default 32,128,512; 'none' skips it):
#                       randread 4k, one fio job, a null disk whose requests take
#                       --sweep-latency-us (default 2000) and virtqueues of 1024 entries, one
#                       round per target. The guest clamps iodepth to the LUN's queue_depth.
#   --json PATH         results (default target/bench-guest.json in the workspace)
# CPU per request: the device side's on-CPU time (/proc/PID/task/*/schedstat) between markers the
# guest prints around each fio run, over the requests the guest's /sys/block/*/stat counted in
# between. Device side: ours, the whole server process; builtin, QEMU's iothreads (its main
# thread with --iothreads 0); vhost-user-blk, the whole qemu-storage-daemon process.
# Kicks and interrupts per request (ours only): from the "queue stats" records our server logs per
# request queue when QEMU disconnects, over the whole boot (every job of that guest).
# Progress (target, round, job, time left) goes to stderr; the tables to stdout.
# Environment: VUS_SERVER_BIN (else the server is built), VUS_TMPDIR, VUS_CACHE.
set -euo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/common.sh
. "$script_dir/common.sh"
repo_root=$(dirname "$script_dir")

die() {
    echo "bench-guest: $*" >&2
    exit 1
}

targets=ours,builtin,vhost-user-blk
backends=null,file
job_names=randread-4k-qd64,randwrite-4k-qd64,randread-4k-qd1,read-128k-qd16
rounds=3
runtime=5
ramp=1
smp=2
numjobs=
queues=
iothreads=1
polling=on
poll_max_ns=
server_args=
image=
sweep=32,128,512
sweep_latency_us=2000
json_out=$repo_root/target/bench-guest.json

while [ "$#" -gt 0 ]; do
    case $1 in
        --targets) need_value "$@"; targets=$2; shift ;;
        --backends) need_value "$@"; backends=$2; shift ;;
        --jobs) need_value "$@"; job_names=$2; shift ;;
        --rounds) need_value "$@"; rounds=$2; shift ;;
        --runtime) need_value "$@"; runtime=$2; shift ;;
        --ramp) need_value "$@"; ramp=$2; shift ;;
        --smp) need_value "$@"; smp=$2; shift ;;
        --numjobs) need_value "$@"; numjobs=$2; shift ;;
        --queues) need_value "$@"; queues=$2; shift ;;
        --iothreads) need_value "$@"; iothreads=$2; shift ;;
        --polling) need_value "$@"; polling=$2; shift ;;
        --poll-max-ns) need_value "$@"; poll_max_ns=$2; shift ;;
        --server-args) need_value "$@"; server_args=$2; shift ;;
        --file) need_value "$@"; image=$2; shift ;;
        --sweep) need_value "$@"; sweep=$2; shift ;;
        --sweep-latency-us) need_value "$@"; sweep_latency_us=$2; shift ;;
        --json) need_value "$@"; json_out=$2; shift ;;
        -h | --help)
            usage
            exit 0
            ;;
        *) die "unknown argument '$1' (try --help)" ;;
    esac
    shift
done
check_number() {
    [[ $2 =~ ^[0-9]+$ ]] || die "$1 wants a number, got '$2'"
}
check_number --rounds "$rounds"
check_number --runtime "$runtime"
check_number --ramp "$ramp"
check_number --smp "$smp"
check_number --iothreads "$iothreads"
check_number --sweep-latency-us "$sweep_latency_us"
[ -z "$numjobs" ] || check_number --numjobs "$numjobs"
[ -z "$queues" ] || check_number --queues "$queues"
if [ "$rounds" -lt 1 ] || [ "$runtime" -lt 1 ] || [ "$smp" -lt 1 ]; then
    die "--rounds, --runtime and --smp must be at least 1"
fi
[ "$iothreads" -le 2 ] || die "--iothreads takes 0, 1 or 2, got '$iothreads'"
case $polling in on | off) ;; *) die "--polling takes on or off, got '$polling'" ;; esac
if [ -n "$poll_max_ns" ]; then
    check_number --poll-max-ns "$poll_max_ns"
    [ "$polling" = on ] || die "--poll-max-ns goes with --polling on"
fi
numjobs=${numjobs:-$smp}
queues=${queues:-$smp}
IFS=, read -r -a target_list <<<"$targets"
IFS=, read -r -a backend_list <<<"$backends"
IFS=, read -r -a job_list <<<"$job_names"
for target in "${target_list[@]}"; do
    case $target in ours | builtin | vhost-user-blk) ;;
        *) die "--targets: unknown target '$target' (ours, builtin, vhost-user-blk)" ;;
    esac
done
for backend in "${backend_list[@]}"; do
    case $backend in null | file) ;; *) die "--backends: unknown backend '$backend' (null, file)" ;; esac
done
# name -> "rw bs iodepth"
declare -A job_spec=(
    [randread-4k-qd64]="randread 4k 64"
    [randwrite-4k-qd64]="randwrite 4k 64"
    [randread-4k-qd1]="randread 4k 1"
    [read-128k-qd16]="read 128k 16"
)
for job in "${job_list[@]}"; do
    [ -n "${job_spec[$job]:-}" ] || die "--jobs: unknown job '$job' (${!job_spec[*]})"
done
sweep_list=()
if [ "$sweep" != none ]; then
    IFS=, read -r -a sweep_list <<<"$sweep"
    for depth in "${sweep_list[@]}"; do
        check_number --sweep "$depth"
        if [ "$depth" -lt 1 ] || [ "$depth" -gt 1024 ]; then
            die "--sweep: depth $depth is not 1..1024"
        fi
    done
fi

if ! command -v jq >/dev/null; then
    echo "bench-guest: installing jq" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q jq >/dev/null ||
        die "jq is needed to read fio's JSON output and could not be installed"
fi
build_server
"$script_dir/setup-guest.sh" --quiet >/dev/null || die "the guest environment could not be built"

work=$(mktemp -d "${VUS_TMPDIR:-/var/tmp}/vus-bench.XXXXXX")
# Kept when the run fails, for its consoles and partial results.
trap 'status=$?; if [ "$status" = 0 ]; then rm -rf "$work"; else echo "bench-guest: consoles and partial results kept in $work" >&2; fi' EXIT
if [ -z "$image" ] && [[ ,$backends, == *,file,* ]]; then
    image=$work/disk.raw
    echo "bench-guest: writing the 1 GiB file disk in full ($image)" >&2
    dd if=/dev/urandom of="$image" bs=1M count=1024 status=none conv=fsync ||
        die "cannot write $image"
fi

# The guest's side of one fio run: block-layer request counts around it, for the host to read
# the device's CPU time at the same moments.
guest_fio() {
    local name=$1 rw=$2 bs=$3 depth=$4 jobs=$5
    cat <<EOF
echo VUS-BENCH-BEGIN $name \$(requests)
fio --name=$name --filename=\$VUS_DISK --ioengine=libaio --direct=1 --rw=$rw --bs=$bs \
--iodepth=$depth --numjobs=$jobs --group_reporting --time_based --runtime=$runtime \
--ramp_time=$ramp --eta=never --output-format=json --output=/tmp/$name.json
echo VUS-BENCH-END $name \$(requests)
echo VUS-FIO-BEGIN $name
cat /tmp/$name.json
echo VUS-FIO-END $name
EOF
}
# shellcheck disable=SC2016 # expanded by the guest's shell
guest_prologue='set -e
disk_name=${VUS_DISK#/dev/}
requests() { read -r r _ _ _ w _ </sys/block/$disk_name/stat; echo $((r + w)); }
dd if=$VUS_DISK of=/dev/null bs=4096 count=1 iflag=direct 2>/dev/null
echo VUS-BENCH-FIRST-READ
echo VUS-BENCH-QUEUE-DEPTH $(cat /sys/block/$disk_name/device/queue_depth 2>/dev/null || cat /sys/block/$disk_name/queue/nr_requests)'
main_script=$guest_prologue
for job in "${job_list[@]}"; do
    read -r rw bs depth <<<"${job_spec[$job]}"
    main_script+=$'\n'$(guest_fio "$job" "$rw" "$bs" "$depth" "$numjobs")
done
sweep_script=$guest_prologue
for depth in "${sweep_list[@]}"; do
    # Linux caps requests in flight at the LUN's queue depth: ask for no more than that.
    sweep_script+=$'\n'"depth=$depth; max=\$(cat /sys/block/\$disk_name/device/queue_depth 2>/dev/null || cat /sys/block/\$disk_name/queue/nr_requests); [ \$depth -le \$max ] || depth=\$max"
    # shellcheck disable=SC2016 # expanded by the guest's shell
    sweep_script+=$'\n'$(guest_fio "depth-$depth" randread 4k '$depth' 1)
done

# On-CPU nanoseconds of the device side's threads now.
device_cpu_ns() {
    local target=$1 pid=$2 total=0 task comm ns
    for task in /proc/"$pid"/task/*; do
        if [ "$target" = builtin ]; then
            comm=$(cat "$task/comm" 2>/dev/null) || continue
            if [ "$iothreads" = 0 ]; then
                [ "${task##*/}" = "$pid" ] || continue
            else
                [[ $comm == "IO iot"* ]] || continue
            fi
        fi
        read -r ns _ <"$task/schedstat" 2>/dev/null || continue
        total=$((total + ns))
    done
    echo "$total"
}

# The PID whose threads make the device side, from run-vm's PID file.
device_pid() {
    local target=$1 pids=$2 kind pid
    while read -r kind pid; do
        case $target:$kind in
            ours:server | vhost-user-blk:daemon) echo "$pid"; return ;;
            # QEMU runs under timeout(1): its child is QEMU. The children file has no newline.
            builtin:qemu)
                pid=$(cat "/proc/$pid/task/$pid/children")
                echo "${pid%% *}"
                return
                ;;
        esac
    done <"$pids"
}

# Boots one guest and records, per job, fio's figures and the device's CPU between markers.
# $1 target, $2 backend, $3 round, $4 kind (main|sweep), $5 guest script.
results=$work/results.jsonl
boots=$work/boots.jsonl
: >"$results"
: >"$boots"
run_guest() {
    local target=$1 backend=$2 round=$3 kind=$4 script=$5
    local tag=$kind-$target-$backend-$round status=0 args=() disk=null
    local console=$work/$tag.console pids=$work/$tag.pids markers=$work/$tag.markers
    [ "$backend" = file ] && disk=$image
    local server_log=$work/$tag.server.log
    case $target in
        ours) args=(--server "--log-format json $server_args") ;;
        builtin) args=(--builtin) ;;
        vhost-user-blk) args=(--vhost-user-blk) ;;
    esac
    args+=(--smp "$smp" --queues "$queues" --iothreads "$iothreads" --disk "$disk")
    [ "$polling" = on ] || args+=(--no-poll)
    [ -z "$poll_max_ns" ] || args+=(--poll-max-ns "$poll_max_ns")
    if [ "$kind" = sweep ]; then
        args+=(--queue-size 1024 --null-latency-us "$sweep_latency_us")
    fi
    : >"$pids"
    : >"$markers"
    local started=$EPOCHREALTIME
    {
    VUS_SERVER_LOG=$server_log VUS_RUN_PIDS=$pids "$script_dir/run-vm.sh" "${args[@]}" --timeout "$boot_timeout" -- "$script" 2>&1 |
        while IFS= read -r line; do
            local now=$EPOCHREALTIME pid
            case $line in
                "run-vm: QEMU started"*) echo "qemu_started $now" >>"$markers" ;;
                VUS-BENCH-FIRST-READ*) echo "first_read $now" >>"$markers" ;;
                VUS-BENCH-QUEUE-DEPTH*) echo "queue_depth ${line##* }" >>"$markers" ;;
                VUS-BENCH-BEGIN* | VUS-BENCH-END*)
                    pid=$(device_pid "$target" "$pids")
                    read -r marker name requests <<<"$line"
                    echo "$marker $name $requests $(device_cpu_ns "$target" "$pid")" >>"$markers"
                    echo "bench-guest:   $name: ${marker#VUS-BENCH-}" >&2
                    ;;
            esac
            printf '%s\n' "$line"
        done >"$console"
    } || status=$?
    if [ "$status" != 0 ]; then
        echo "bench-guest: the $target guest ($backend backend, $kind, round $round) failed (status $status):" >&2
        tail -n 30 "$console" | sed 's/^/  | /' >&2
        exit 1
    fi
    local qemu_started first_read queue_depth
    qemu_started=$(awk '$1 == "qemu_started" { print $2 }' "$markers")
    first_read=$(awk '$1 == "first_read" { print $2 }' "$markers")
    queue_depth=$(awk '$1 == "queue_depth" { print $2 }' "$markers")
    local counters=null
    if [ "$target" = ours ]; then
        counters=$(jq -R -s -c '[split("\n")[] | fromjson? | select(.msg == "queue stats")]
            | {requests: (map(.requests) | add // 0), kicks: (map(.kicks) | add // 0),
               interrupts: (map(.interrupts) | add // 0)}' "$server_log")
    fi
    jq -n -c --arg target "$target" --arg backend "$backend" --arg kind "$kind" \
        --argjson round "$round" --argjson attach "$(awk -v a="$qemu_started" -v b="$first_read" 'BEGIN { printf "%.3f", b - a }')" \
        --argjson boot "$(awk -v a="$started" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')" \
        --argjson queue_depth "${queue_depth:-null}" --argjson counters "$counters" \
        '{target: $target, backend: $backend, kind: $kind, round: $round,
          attach_s: $attach, guest_s: $boot, queue_depth: $queue_depth,
          kicks_per_request: (if ($counters.requests // 0) > 0 then $counters.kicks / $counters.requests else null end),
          interrupts_per_request: (if ($counters.requests // 0) > 0 then $counters.interrupts / $counters.requests else null end)}' >>"$boots"
    local name begin_req begin_cpu end_req end_cpu direction
    while read -r name begin_req begin_cpu end_req end_cpu; do
        direction="read"
        [[ $name == *write* ]] && direction="write"
        sed -n "/^VUS-FIO-BEGIN $name\$/,/^VUS-FIO-END $name\$/p" "$console" | sed '1d;$d' |
            jq -c --arg job "$name" --arg target "$target" --arg backend "$backend" \
                --arg kind "$kind" --arg dir "$direction" --argjson round "$round" \
                --argjson requests "$((end_req - begin_req))" --argjson cpu "$((end_cpu - begin_cpu))" \
                '.jobs[0][$dir] as $d |
                 {kind: $kind, job: $job, backend: $backend, target: $target, round: $round,
                  iodepth: (.jobs[0]["job options"].iodepth // "" | tonumber? // null),
                  iops: $d.iops, bw_kib: $d.bw,
                  p50_us: ($d.clat_ns.percentile["50.000000"] / 1000),
                  p99_us: ($d.clat_ns.percentile["99.000000"] / 1000),
                  requests: $requests,
                  cpu_ns_per_request: (if $requests > 0 then $cpu / $requests else null end)}' \
                >>"$results" || die "no fio result for $name in the $target guest's output ($console)"
    done < <(awk '$1 == "VUS-BENCH-BEGIN" { b[$2] = $3 " " $4 }
                  $1 == "VUS-BENCH-END" { print $2, b[$2], $3, $4 }' "$markers")
}

per_job=$((runtime + ramp + 2))
boot_timeout=$((240 + (${#job_list[@]} + ${#sweep_list[@]}) * per_job * 3))
total=$((rounds * ${#target_list[@]} * ${#backend_list[@]}))
[ "${#sweep_list[@]}" = 0 ] || total=$((total + ${#target_list[@]}))
done_boots=0
spent=0
estimate_main=$((15 + ${#job_list[@]} * per_job))
progress() {
    local left=$(((rounds * ${#target_list[@]} * ${#backend_list[@]} - done_boots) * estimate_main))
    [ "$done_boots" -le 0 ] || left=$((spent * (total - done_boots) / done_boots))
    echo "bench-guest: [$((done_boots + 1))/$total] $*, about $left s left" >&2
}
run_counted() {
    local started=$SECONDS
    run_guest "$@"
    done_boots=$((done_boots + 1))
    spent=$((spent + SECONDS - started))
}

for ((round = 1; round <= rounds; round++)); do
    for b in "${!backend_list[@]}"; do
        # Rotate the targets with the round and the backend, so none always runs first.
        n=${#target_list[@]}
        for ((i = 0; i < n; i++)); do
            target=${target_list[(i + round + b) % n]}
            progress "round $round/$rounds, $target, ${backend_list[b]} backend, ${#job_list[@]} jobs of $((runtime + ramp)) s"
            run_counted "$target" "${backend_list[b]}" "$round" main "$main_script"
        done
    done
done
if [ "${#sweep_list[@]}" != 0 ]; then
    for target in "${target_list[@]}"; do
        progress "depth sweep, $target, null disk with ${sweep_latency_us} us latency, depths $sweep"
        run_counted "$target" null 1 sweep "$sweep_script"
    done
fi

mkdir -p "$(dirname "$json_out")"
jq -n --slurpfile runs "$results" --slurpfile boots "$boots" \
    --argjson smp "$smp" --argjson queues "$queues" --argjson iothreads "$iothreads" \
    --argjson numjobs "$numjobs" --argjson runtime "$runtime" --argjson ramp "$ramp" \
    --argjson rounds "$rounds" --arg polling "$polling" --arg poll_max_ns "$poll_max_ns" --arg server_args "$server_args" \
    --argjson sweep_latency_us "$sweep_latency_us" --arg load "$(cut -d' ' -f1-3 /proc/loadavg)" \
    --arg cpus "$(nproc)" --arg file "${image:-}" '
    def median: sort | if length == 0 then null
        elif length % 2 == 1 then .[length / 2 | floor]
        else (.[length / 2 - 1] + .[length / 2]) / 2 end;
    def stats(f): [.[] | f | select(. != null)] |
        {median: median, min: min, max: max,
         spread_pct: (if length > 0 and median > 0 then (max - min) / median * 100 else null end)};
    ($runs | map(select(.kind == "main"))) as $main |
    ($main | group_by([.backend, .job, .target]) | map({
        backend: .[0].backend, job: .[0].job, target: .[0].target, rounds: length,
        iops: stats(.iops), p50_us: stats(.p50_us), p99_us: stats(.p99_us),
        cpu_ns_per_request: stats(.cpu_ns_per_request)})) as $summary |
    def median_of($b; $j; $t; f):
        [$summary[] | select(.backend == $b and .job == $j and .target == $t) | f][0];
    {config: {smp: $smp, queues: $queues, iothreads: $iothreads, numjobs: $numjobs,
              rounds: $rounds, runtime_s: $runtime, ramp_s: $ramp, polling: $polling, poll_max_ns: $poll_max_ns,
              server_args: $server_args, accel: "tcg", sweep_latency_us: $sweep_latency_us,
              host_cpus: ($cpus | tonumber), load_average_at_end: $load, file_disk: $file},
     summary: $summary,
     ratios: [$summary[] | select(.target == "ours") | . as $o | {
        backend, job,
        iops_vs_builtin: (median_of($o.backend; $o.job; "builtin"; .iops.median) as $x
            | if ($x // 0) > 0 then $o.iops.median / $x else null end),
        iops_vs_vhost_user_blk: (median_of($o.backend; $o.job; "vhost-user-blk"; .iops.median) as $x
            | if ($x // 0) > 0 then $o.iops.median / $x else null end),
        cpu_vs_builtin: (median_of($o.backend; $o.job; "builtin"; .cpu_ns_per_request.median) as $x
            | if ($x // 0) > 0 and $o.cpu_ns_per_request.median != null then $o.cpu_ns_per_request.median / $x else null end),
        cpu_vs_vhost_user_blk: (median_of($o.backend; $o.job; "vhost-user-blk"; .cpu_ns_per_request.median) as $x
            | if ($x // 0) > 0 and $o.cpu_ns_per_request.median != null then $o.cpu_ns_per_request.median / $x else null end)}],
     attach: ($boots | map(select(.kind == "main")) | group_by(.target)
        | map({target: .[0].target, attach_s: stats(.attach_s)})),
     signalling: ($boots | map(select(.kind == "main" and .target == "ours")) | group_by(.backend)
        | map({backend: .[0].backend, kicks_per_request: stats(.kicks_per_request),
               interrupts_per_request: stats(.interrupts_per_request)})),
     sweep: ($runs | map(select(.kind == "sweep"))
        | map(. + {requested_depth: (.job | ltrimstr("depth-") | tonumber)})),
     sweep_queue_depth: ($boots | map(select(.kind == "sweep") | {target, queue_depth})),
     runs: $runs, boots: $boots}' >"$json_out"

# The tables, from the JSON.
echo
echo "Guest fio, median of $rounds rounds (spread = (max - min) / median), $smp vCPUs, numjobs $numjobs, $queues queues, $iothreads iothreads, polling $polling${poll_max_ns:+ (poll-max-ns $poll_max_ns)}:"
jq -r '
    def n(x): if x == null then "-" else (x | floor | tostring) end;
    def f1(x): if x == null then "-" else ((x * 10 | round) / 10 | tostring) end;
    def pct(x): if x == null then "-" else ((x | round | tostring) + "%") end;
    ["backend", "job", "target", "IOPS", "spread", "p50 us", "p99 us", "dev ns/req"],
    (.summary[] | [.backend, .job, .target, n(.iops.median), pct(.iops.spread_pct),
        f1(.p50_us.median), f1(.p99_us.median), n(.cpu_ns_per_request.median)])
    | @tsv' "$json_out" | column -t -s $'\t'
echo
echo "Ratios of medians (IOPS: above 1 is faster; CPU per request: below 1 is cheaper):"
jq -r '
    def r(x): if x == null then "-" else ((x * 100 | round) / 100 | tostring) end;
    ["backend", "job", "IOPS/builtin", "IOPS/vhost", "CPU/builtin", "CPU/vhost"],
    (.ratios[] | [.backend, .job, r(.iops_vs_builtin), r(.iops_vs_vhost_user_blk),
        r(.cpu_vs_builtin), r(.cpu_vs_vhost_user_blk)]) | @tsv' "$json_out" | column -t -s $'\t'
echo
echo "QEMU start to the guest's first read of the disk (median, min-max, seconds):"
jq -r 'def s(x): x * 100 | round / 100 | tostring;
    .attach[] | "  \(.target): \(s(.attach_s.median)) (\(s(.attach_s.min))-\(s(.attach_s.max)))"' "$json_out"
echo
echo "Our server's kicks and interrupts per request (median over rounds, whole boots, from its queue stats):"
jq -r '.signalling[] | "  \(.backend): \(.kicks_per_request.median // "-" | tostring | .[0:5]) kicks, \(.interrupts_per_request.median // "-" | tostring | .[0:5]) interrupts per request"' "$json_out"
if [ "${#sweep_list[@]}" != 0 ]; then
    echo
    echo "Depth sweep: randread 4k, 1 job, null disk with $sweep_latency_us us latency, 1024-entry queues:"
    jq -r '
        ["target", "depth", "fio iodepth", "IOPS", "p50 us", "dev ns/req"],
        (.sweep[] | [.target, .requested_depth, .iodepth, (.iops | floor),
            ((.p50_us * 10 | round) / 10), (.cpu_ns_per_request // 0 | floor)]) | @tsv' \
        "$json_out" | column -t -s $'\t'
    jq -r '.sweep_queue_depth[] | "  \(.target): the guest LUN queue depth is \(.queue_depth)"' "$json_out"
fi
echo "bench-guest: results in $json_out" >&2
