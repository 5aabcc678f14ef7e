#!/usr/bin/env bash
# Regenerates the figures of docs/BENCHMARKS.md from one fresh run: the host matrix, the host
# depth sweep, memory and start-up, the guest comparison with QEMU's virtio-scsi and
# vhost-user-blk (with its own depth sweep), and the plots. Writes the JSON and PNG files to
# docs/bench/ and replaces the part of docs/BENCHMARKS.md between its "generated" markers.
# The default matrix takes about 20-25 minutes on a quiet 2-core machine.
#
# Usage: scripts/bench-report.sh [OPTIONS]
#   --rounds N       guest rounds per target (default 3)
#   --runtime S      guest fio seconds per job (default 5); the host runs take --host-seconds
#   --host-seconds S measured seconds per host configuration (default 3)
#   --out DIR        where JSON and plots go (default docs/bench); the document is only
#                    rewritten with the default
#   --reuse-host     keep the host results (host, depth, memory, profile) already in --out and
#                    run only the guest benchmark and the plots
#   --quick          the CI configuration: 1 round, 2 s, one job per target, a short sweep,
#                    written to a temporary directory, the document left alone
# Environment: CARGO_TARGET_DIR, VUS_SERVER_BIN, VUS_TMPDIR, VUS_CACHE as for the other scripts.
set -euo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/common.sh
. "$script_dir/common.sh"
repo_root=$(dirname "$script_dir")

die() {
    echo "bench-report: $*" >&2
    exit 1
}

rounds=3
runtime=5
host_seconds=3
out=$repo_root/docs/bench
quick=0
reuse_host=0
while [ "$#" -gt 0 ]; do
    case $1 in
        --rounds) need_value "$@"; rounds=$2; shift ;;
        --runtime) need_value "$@"; runtime=$2; shift ;;
        --host-seconds) need_value "$@"; host_seconds=$2; shift ;;
        --out) need_value "$@"; out=$2; shift ;;
        --quick) quick=1 ;;
        --reuse-host) reuse_host=1 ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown argument '$1' (try --help)" ;;
    esac
    shift
done
doc=$repo_root/docs/BENCHMARKS.md
write_doc=0
[ "$out" = "$repo_root/docs/bench" ] && write_doc=1
guest_options=(--rounds "$rounds" --runtime "$runtime")
host_options=(--seconds "$host_seconds" --warmup 1)
if [ "$quick" = 1 ]; then
    out=$(mktemp -d "${VUS_TMPDIR:-/var/tmp}/vus-bench-report.XXXXXX")
    write_doc=0
    guest_options=(--rounds 1 --runtime 2 --ramp 0 --backends null --jobs randread-4k-qd64 --sweep 32)
    host_options=(--seconds 2 --warmup 0.5)
fi
mkdir -p "$out"
# The profile's raw data and the generated part of the document are not results to keep.
scratch=$(mktemp -d "${VUS_TMPDIR:-/var/tmp}/vus-bench-scratch.XXXXXX")
trap 'rm -rf "$scratch"; [ "$quick" = 0 ] || rm -rf "$out"' EXIT
cd "$repo_root"
started=$SECONDS

build_server
load_before=$(cut -d' ' -f1-3 /proc/loadavg)

stage() {
    echo "==> bench-report: $* ($((SECONDS - started)) s so far)" >&2
}

host_matrix=(--disk "null,file" --kick "socket,iofd" --queues "1,2" --iothreads "0,1,2" --disk-options cache=none)
[ "$quick" = 0 ] || host_matrix=(--disk "null,file" --kick iofd --queues 1 --iothreads 1 --disk-options cache=none)
depths=32,64,128,256,512,1024
[ "$quick" = 0 ] || depths=32,512
memory_queues=1,4,16
[ "$quick" = 0 ] || memory_queues=1,4
scaling_rounds=3
[ "$quick" = 0 ] || scaling_rounds=1
host_results=("$out/host.json" "$out/depth.json" "$out/memory.json" "$out/profile.txt"
    "$out/polling.txt" "$out/scaling.txt")
if [ "$reuse_host" = 1 ]; then
    for file in "${host_results[@]}"; do
        [ -r "$file" ] || die "--reuse-host: $file is missing"
    done
    stage "host results reused from $out"
else
    stage "host matrix: null and file disks, socket and iofd kicks, 1 and 2 queues, 0-2 iothreads"
    "$script_dir/bench-host.sh" "${host_matrix[@]}" "${host_options[@]}" \
        --json "$out/host.json" >"$out/host.txt"
    stage "host depth sweep: null disk with 2 ms latency, 1024-entry queue"
    "$script_dir/bench-host.sh" --disk null --kick iofd --queues 1 --null-latency-us 2000 \
        --queue-size 1024 --depth "$depths" "${host_options[@]}" \
        --json "$out/depth.json" >"$out/depth.txt"
    stage "memory: 1, 4 and 16 queues of 1024 entries, 16 LUNs, every queue full"
    "$script_dir/bench-host.sh" --disk null --kick socket --queues "$memory_queues" --queue-size 1024 \
        --depth 1024 --luns 16 "${host_options[@]}" --json "$out/memory.json" >"$out/memory.txt"
    stage "polling: the server's iothread polls, the driver spins on its used ring"
    "$script_dir/bench-host.sh" --disk null --kick iofd --queues 1 --wait poll \
        --server-args '--iothread io0' "${host_options[@]}" --json "$out/polling.json" >"$out/polling.txt"
    stage "scaling: 1 vs 2 iothreads, $scaling_rounds alternating rounds, polling off"
    "$script_dir/bench-host.sh" --disk null --kick iofd --queues 2 --iothreads 1,2 \
        --rounds "$scaling_rounds" --server-args '--poll-max-ns 0' "${host_options[@]}" \
        --json "$out/scaling.json" >"$out/scaling.txt"
    if [ "$quick" = 0 ]; then
        stage "scaling under callgrind: instructions per request, 1 vs 2 iothreads"
        "$script_dir/bench-host.sh" --disk null --kick iofd --queues 2 --iothreads 1,2 --callgrind \
            --server-args '--poll-max-ns 0' "${host_options[@]}" >>"$out/scaling.txt"
    fi
    stage "profile: perf record -g of the server, null disk, socket kicks, 1 queue on its main loop"
    if ! command -v perf >/dev/null; then
        echo "bench-report: installing linux-perf" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends linux-perf >/dev/null ||
            die "perf (Debian linux-perf) is needed for the profile and could not be installed"
    fi
    perf record -q -g -o "$scratch/perf.data" -- "$script_dir/bench-host.sh" --disk null --kick socket \
        --queues 1 "${host_options[@]}" >"$scratch/profiled.txt" 2>"$scratch/perf-record.log" ||
        { cat "$scratch/perf-record.log" >&2; die "perf record failed"; }
    perf report -q -i "$scratch/perf.data" --comms vfio-user-scsi --percentage relative --no-children --sort symbol \
        --percent-limit 1 --stdio -g none 2>/dev/null | sed '/^$/d; s/ *- *- *$//' | cut -c1-140 | head -40 >"$out/profile.txt"
fi
stage "guest: ours, builtin and vhost-user-blk"
"$script_dir/bench-guest.sh" "${guest_options[@]}" --json "$out/guest.json" >"$out/guest.txt"
stage "plots"
"$script_dir/bench-plot.sh" --guest "$out/guest.json" --host "$out/host.json" \
    --depth "$out/depth.json" --out "$out"

load_after=$(cut -d' ' -f1-3 /proc/loadavg)
elapsed=$((SECONDS - started))
depth_factor=$(jq -r '[.runs[] | {(.depth | tostring): .iops}] | add |
    if .["512"] and .["32"] then (.["512"] / .["32"] * 10 | round / 10 | tostring) else "-" end' \
    "$out/depth.json")
memory_table=$(jq -r '.runs[] | "| \(.queues) | \(.server.rss_idle_kib) (\(.server.rss_anon_idle_kib)) | \(.server.rss_loaded_kib) (\(.server.rss_anon_loaded_kib)) | \(.server.startup_ms * 10 | round / 10) |"' \
    "$out/memory.json")
startup_median=$(jq -s -r '[.[].runs[].server.startup_ms] | sort | .[length / 2 | floor] * 10 | round / 10' \
    "$out/host.json" "$out/depth.json" "$out/memory.json")

generated() {
    local os_name
    # shellcheck source=/dev/null # the host's own file, not one of ours
    os_name=$(. /etc/os-release && echo "$PRETTY_NAME")
    cat <<EOF
Generated by \`scripts/bench-report.sh\` on $(date -u '+%Y-%m-%d %H:%M UTC') in $((elapsed / 60)) min,
commit $(git -C "$repo_root" rev-parse --short HEAD)$(git -C "$repo_root" diff --quiet HEAD || echo ' (with local changes)').

| | |
|---|---|
| machine | $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')), $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo) |
| host | $os_name, kernel $(uname -r) |
| QEMU | $("$("$script_dir/setup-guest.sh" --print-dir --quiet)/bin/qemu-system-x86_64" --version | head -1) |
| server | $("$VUS_SERVER_BIN" --version 2>/dev/null || echo vfio-user-scsi), $(rustc --version) |
| load average | $load_before before, $load_after after (1, 5, 15 min) |

### Guest: fio in a TCG guest, ours beside QEMU's virtio-scsi and vhost-user-blk

\`scripts/bench-guest.sh ${guest_options[*]}\`

\`\`\`
$(cat "$out/guest.txt")
\`\`\`

![guest IOPS](bench/guest-iops.png)
![device CPU per request](bench/guest-cpu.png)
![guest depth sweep](bench/guest-depth.png)

### Host: the userspace driver over vfio-user, no guest

\`scripts/bench-host.sh ${host_matrix[*]} ${host_options[*]}\`

\`\`\`
$(cat "$out/host.txt")
\`\`\`

![host IOPS and CPU](bench/host-cpu.png)

### Polling: the server's iothread polls, the driver spins on its used ring

\`scripts/bench-host.sh --disk null --kick iofd --queues 1 --wait poll --server-args '--iothread io0' ${host_options[*]}\`

\`\`\`
$(sed -n '/^disk /,/^  driver:/p' "$out/polling.txt")
\`\`\`

### 1 vs 2 iothreads

\`scripts/bench-host.sh --disk null --kick iofd --queues 2 --iothreads 1,2 --rounds $scaling_rounds --server-args '--poll-max-ns 0' ${host_options[*]}\`,
then the same once with \`--callgrind\`:

\`\`\`
$(grep -A12 '^iothreads, 2 vs 1' "$out/scaling.txt")
\`\`\`

### Depth sweep: null disk with 2 ms latency

\`scripts/bench-host.sh --disk null --kick iofd --queues 1 --null-latency-us 2000 --queue-size 1024 --depth $depths ${host_options[*]}\`

Depth 512 gives **${depth_factor}x** the IOPS of depth 32 (ideal 16x).

\`\`\`
$(sed -n '/^disk /,/^$/p' "$out/depth.txt")
\`\`\`

![host depth sweep](bench/host-depth.png)

### Where the server's time goes

\`perf record -g -- scripts/bench-host.sh --disk null --kick socket --queues 1 ${host_options[*]}\`,
the server's main thread (it serves the queue itself): self time per symbol above 1% of that thread's samples:

\`\`\`
$(cat "$out/profile.txt")
\`\`\`

### Memory and start-up

\`scripts/bench-host.sh --disk null --kick socket --queues $memory_queues --queue-size 1024 --depth 1024 --luns 16 ${host_options[*]}\`

| request queues (1024 entries, full) | RSS idle, KiB (own) | RSS loaded, KiB (own) | start to listening (ms) |
|---|---|---|---|
$memory_table

RSS counts the pages of the driver's (guest) memory the server has touched, which it shares
with the driver as it shares guest RAM with QEMU; "own" is RssAnon, the server's private memory.
Median start-to-listening time over every host run: $startup_median ms.
EOF
}

if [ "$write_doc" = 1 ]; then
    [ -f "$doc" ] || die "$doc is missing: it holds the text around the generated part"
    if ! grep -q '^<!-- generated:begin -->$' "$doc" || ! grep -q '^<!-- generated:end -->$' "$doc"; then
        die "$doc lacks the <!-- generated:begin --> and <!-- generated:end --> lines"
    fi
    generated >"$scratch/generated.md"
    awk -v part="$scratch/generated.md" '
        /^<!-- generated:begin -->$/ { print; while ((getline line < part) > 0) print line; skip = 1; next }
        /^<!-- generated:end -->$/ { skip = 0 }
        !skip' "$doc" >"$doc.new"
    mv "$doc.new" "$doc"
    echo "bench-report: $doc regenerated in $elapsed s; depth 512 / depth 32 = ${depth_factor}x" >&2
else
    generated >/dev/null
    echo "bench-report: finished in $elapsed s (results in $out, the document left alone)" >&2
fi
