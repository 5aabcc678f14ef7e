#!/usr/bin/env bash
# Host-side benchmark, no guest: builds the release server and runs the `host` bench of the tests
# crate, whose userspace virtio-scsi driver loads N request queues at a fixed depth and prints
# IOPS, latency percentiles and the server's CPU nanoseconds per request (per thread), and its
# kicks, interrupts and heap allocations per request, over the measured window (from `ctl stats`:
# the steady state) and over the whole connection (the server is built with its
# count-allocations feature). With --iothreads 1,2 it ends with the 2-vs-1 ratio of CPU per request.
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
#   Memory (RSS idle and loaded) and start-up time with 16 LUNs:
#     scripts/bench-host.sh --disk null --queues 1,4,16 --queue-size 1024 --depth 1024 --luns 16
#   The file disk is a temporary file written in full once per run (or --file PATH).
# Environment: CARGO_TARGET_DIR is honoured; VUS_SERVER_BIN, when set, skips the server build.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"

for arg in "$@"; do
    if [ "$arg" = -h ] || [ "$arg" = --help ]; then
        sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
        echo
        exec cargo bench -q -p tests --bench host -- --help
    fi
done

if [ -z "${VUS_SERVER_BIN:-}" ]; then
    target_dir=${CARGO_TARGET_DIR:-$repo_root/target}
    case $target_dir in /*) ;; *) target_dir=$repo_root/$target_dir ;; esac
    cargo build --release -p server --features count-allocations
    export VUS_SERVER_BIN=$target_dir/release/vfio-user-scsi
fi
exec cargo bench -p tests --bench host -- "$@"
