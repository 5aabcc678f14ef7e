#!/usr/bin/env bash
# Host-side benchmark, no guest: builds the release server and runs the `host` bench of the tests
# crate, whose userspace virtio-scsi driver loads N request queues at a fixed depth and prints
# IOPS, latency percentiles and the server's CPU nanoseconds per request (per thread), and its
# kicks, interrupts and heap allocations per request, over the measured window (from `ctl stats`:
# the steady state) and over the whole connection (the server is built with its
# count-allocations feature), its system calls per request per thread (perf stat on the
# raw_syscalls:sys_enter tracepoint; Debian linux-perf, installed when missing) and each iothread's
# busy time per request (its own clock, empty polls apart: what the <300 ns polling aim is judged
# by). With --iothreads 1,2 it ends with the 2-vs-1 ratio of CPU per request, the median over
# --rounds; --callgrind adds instructions per request per server thread (Debian valgrind).
#
# Usage: scripts/bench-host.sh [BENCH OPTIONS]
#   Every option goes to the benchmark; `scripts/bench-host.sh --help` lists them. Without any it
#   runs the default matrix: null and file disks x socket and iofd kicks x 1 and 2 queues,
#   randread 4 KiB, depth 32, 5 s each. Examples:
#     scripts/bench-host.sh --disk null --kick iofd --queues 2 --seconds 10
#     scripts/bench-host.sh --server-args '--iothread io0 --iothread io1' --json /tmp/host.json
#     scripts/bench-host.sh --queues 1,2 --iothreads 0,1,2        (iothreads as a dimension)
#   Depth sweep on a null disk whose requests take 2 ms (IOPS should follow depth / latency):
#     scripts/bench-host.sh --disk null --null-latency-us 2000 --queue-size 1024 \
#         --depth 32,64,128,256,512,1024
#   Polling on both sides (the server's iothread polls, the driver spins on its used ring):
#     scripts/bench-host.sh --disk null --kick iofd --queues 1 --wait poll --server-args '--iothread io0'
#   1 vs 2 iothreads, alternating, with the load-independent instruction counts:
#     scripts/bench-host.sh --disk null --kick iofd --queues 2 --iothreads 1,2 --rounds 3 \
#         --server-args '--poll-max-ns 0'        (add --callgrind for instructions per request)
#   Memory (RSS idle and loaded) and start-up time with 16 LUNs:
#     scripts/bench-host.sh --disk null --queues 1,4,16 --queue-size 1024 --depth 1024 --luns 16
#   The file disk is a temporary file written in full once per run (or --file PATH).
# Environment: CARGO_TARGET_DIR is honoured; VUS_SERVER_BIN, when set, skips the server build.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"
# shellcheck source=scripts/common.sh
. "$repo_root/scripts/common.sh"

die() {
    echo "bench-host: $*" >&2
    exit 1
}

for arg in "$@"; do
    if [ "$arg" = -h ] || [ "$arg" = --help ]; then
        sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
        echo
        exec cargo bench -q -p tests --bench host -- --help
    fi
done

# perf counts the server's system calls per thread over the window (without it the bench says
# that they were not counted); valgrind runs the server for --callgrind.
install_if_missing() {
    local command=$1 package=$2
    command -v "$command" >/dev/null && return 0
    if [ "$(id -u)" != 0 ]; then
        echo "bench-host: $command (Debian $package) is missing, and only root installs it" >&2
        return 1
    fi
    echo "bench-host: installing $package" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends "$package" >/dev/null 2>&1 ||
        { apt-get update -qq >/dev/null 2>&1 &&
            apt-get install -y -q --no-install-recommends "$package" >/dev/null 2>&1; } ||
        { echo "bench-host: could not install $package" >&2; return 1; }
}
install_if_missing perf linux-perf || true
for arg in "$@"; do
    if [ "$arg" = --callgrind ]; then
        install_if_missing callgrind_control valgrind || exit 1
    fi
done

VUS_SERVER_FEATURES=count-allocations build_server
exec cargo bench -p tests --bench host -- "$@"
