#!/usr/bin/env bash
# Draws PNG plots from the benchmarks' JSON with matplotlib (Debian's python3-matplotlib,
# installed when missing).
#
# Usage: scripts/bench-plot.sh [--guest JSON] [--host JSON] [--depth JSON] [--out DIR]
#   --guest JSON   bench-guest.sh results: guest-iops.png (median IOPS per target and job, bars
#                  from the lowest to the highest round), guest-cpu.png (device CPU ns per
#                  request), and guest-depth.png when the run has a depth sweep
#   --host JSON    bench-host.sh results of a matrix: host-cpu.png (server CPU ns per request and
#                  IOPS per configuration)
#   --depth JSON   bench-host.sh results of a depth sweep: host-depth.png (IOPS against requests
#                  in flight, with the ideal depth / latency line)
#   --out DIR      where the PNGs go (default: the current directory)
# At least one input is needed; each plot is written only from the inputs given.
set -euo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/common.sh
. "$script_dir/common.sh"

die() {
    echo "bench-plot: $*" >&2
    exit 1
}

guest=
host=
depth=
out=.
while [ "$#" -gt 0 ]; do
    case $1 in
        --guest) need_value "$@"; guest=$2; shift ;;
        --host) need_value "$@"; host=$2; shift ;;
        --depth) need_value "$@"; depth=$2; shift ;;
        --out) need_value "$@"; out=$2; shift ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown argument '$1' (try --help)" ;;
    esac
    shift
done
[ -n "$guest$host$depth" ] || die "nothing to plot: give --guest, --host or --depth (try --help)"
for input in "$guest" "$host" "$depth"; do
    [ -z "$input" ] || [ -r "$input" ] || die "cannot read '$input'"
done
# Debian's own interpreter, the one python3-matplotlib installs into (not a pyenv or venv python).
python=/usr/bin/python3
if ! "$python" -c 'import matplotlib' 2>/dev/null; then
    echo "bench-plot: installing python3-matplotlib" >&2
    export DEBIAN_FRONTEND=noninteractive
    { apt-get install -y -q --no-install-recommends python3-matplotlib >/dev/null 2>&1 ||
        { apt-get update -qq && apt-get install -y -q --no-install-recommends python3-matplotlib >/dev/null; }; } ||
        die "python3-matplotlib is needed for the plots and could not be installed"
fi
"$python" -c 'import matplotlib' 2>/dev/null || die "$python cannot import matplotlib"

mkdir -p "$out"

"$python" - "$guest" "$host" "$depth" "$out" <<'EOF'
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

guest_path, host_path, depth_path, out = sys.argv[1:5]
COLOURS = {"ours": "tab:blue", "builtin": "tab:orange", "vhost-user-blk": "tab:green"}


def save(fig, name):
    path = f"{out}/{name}"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"bench-plot: wrote {path}", file=sys.stderr)


def grouped_bars(summary, metric, ylabel, title, name):
    groups = sorted({(s["backend"], s["job"]) for s in summary})
    targets = [t for t in COLOURS if any(s["target"] == t for s in summary)]
    width = 0.8 / max(len(targets), 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(groups)), 4))
    for i, target in enumerate(targets):
        xs, heights, low, high = [], [], [], []
        for g, (backend, job) in enumerate(groups):
            row = next((s for s in summary if (s["backend"], s["job"], s["target"]) == (backend, job, target)), None)
            if row is None or row[metric]["median"] is None:
                continue
            m = row[metric]
            xs.append(g + (i - (len(targets) - 1) / 2) * width)
            heights.append(m["median"])
            low.append(m["median"] - m["min"])
            high.append(m["max"] - m["median"])
        ax.bar(xs, heights, width, yerr=[low, high], capsize=3, label=target, color=COLOURS[target])
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([f"{job}\n{backend}" for backend, job in groups], fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    save(fig, name)


def depth_plot(points, latency_us, title, name):
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, series in points.items():
        series = sorted(series)
        ax.plot([d for d, _ in series], [v for _, v in series], marker="o", label=label,
                color=COLOURS.get(label))
    if latency_us:
        depths = sorted({d for series in points.values() for d, _ in series})
        ax.plot(depths, [d / (latency_us / 1e6) for d in depths], linestyle="--", color="grey",
                label=f"ideal: depth / {latency_us} us")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("requests in flight")
    ax.set_ylabel("IOPS")
    ax.set_title(title)
    ax.legend()
    save(fig, name)


if guest_path:
    guest = json.load(open(guest_path))
    config = guest["config"]
    setting = f'{config["smp"]} vCPUs, {config["iothreads"]} iothreads, median of {config["rounds"]} rounds'
    grouped_bars(guest["summary"], "iops", "IOPS", f"Guest fio IOPS ({setting})", "guest-iops.png")
    grouped_bars(guest["summary"], "cpu_ns_per_request", "device CPU ns per request",
                 f"Device-side CPU per request ({setting})", "guest-cpu.png")
    if guest.get("sweep"):
        points = {}
        for run in guest["sweep"]:
            points.setdefault(run["target"], []).append((run["requested_depth"], run["iops"]))
        depth_plot(points, config["sweep_latency_us"],
                   f'Guest depth sweep, null disk with {config["sweep_latency_us"]} us latency',
                   "guest-depth.png")

if host_path:
    runs = json.load(open(host_path))["runs"]
    labels = [f'{r["disk"]} {r["kick"]}\nq{r["queues"]}'
              + (f' it{r["iothreads"]}' if r.get("iothreads") is not None else "") for r in runs]
    fig, (left, right) = plt.subplots(2, 1, figsize=(min(14, max(7, 0.6 * len(runs))), 7))
    left.bar(range(len(runs)), [r["iops"] for r in runs], color="tab:blue")
    left.set_ylabel("IOPS")
    left.set_title("Host benchmark: IOPS")
    right.bar(range(len(runs)), [r["server"]["cpu_ns_per_request"] for r in runs], color="tab:purple")
    right.set_ylabel("server CPU ns per request")
    right.set_title("Host benchmark: server CPU per request")
    for ax in (left, right):
        ax.set_xticks(range(len(runs)))
        ax.set_xticklabels(labels, fontsize=7)
    save(fig, "host-cpu.png")

if depth_path:
    document = json.load(open(depth_path))
    latency = document["host"].get("null_latency_us", 0)
    points = {}
    for r in document["runs"]:
        points.setdefault(f'ours, {r["queues"]} queue(s)', []).append((r["depth"], r["iops"]))
    depth_plot(points, latency, f"Host depth sweep, null disk with {latency} us latency",
               "host-depth.png")
EOF
