#!/usr/bin/env bash
# Runs the fuzz targets of server/vfio-user/fuzz and server/fuzz, each for a bounded time, after replaying its committed
# corpus (seeds and the inputs of past crashes). The test command runs every target for 20 s;
# run them long by hand, for example `scripts/fuzz.sh 3600 connection`.
#
# New inputs the fuzzer finds go to a work corpus outside the repository
# ($VUS_CACHE/fuzz-corpus/TARGET), crashes to $VUS_CACHE/fuzz-artifacts/TARGET/. A crash fails
# the run: reproduce it with `cargo fuzz run TARGET FILE` in the target's crate (or run
# $VUS_FUZZ_TARGET/x86_64-unknown-linux-gnu/release/TARGET FILE), fix it, and add FILE to the
# crate's fuzz/corpus/TARGET/ as crash-NAME so that every later run replays it.
#
# Usage: scripts/fuzz.sh [SECONDS_PER_TARGET (default 20)] [TARGET...]   (default: all targets)
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
seconds=${1:-20}
shift || true
case $seconds in '' | *[!0-9]*) echo "fuzz.sh: seconds must be a number, got '$seconds'" >&2; exit 2 ;; esac
cache=${VUS_CACHE:-/var/cache/vfio-user-scsi}
fuzz_target=${VUS_FUZZ_TARGET:-$cache/fuzz-target}
fuzz_crates=(server/vfio-user/fuzz server/fuzz)
declare -A crate_of
for crate in "${fuzz_crates[@]}"; do
    while read -r target; do
        crate_of[$target]=$crate
    # The names of the [[bin]] sections: the package and a shared [lib] are no targets.
    done < <(awk '/^\[/ { bin = ($0 == "[[bin]]") } bin && /^name = / { gsub(/"/, "", $3); print $3 }' \
        "$repo_root/$crate/Cargo.toml")
done
targets=("$@")
if [ "${#targets[@]}" = 0 ]; then
    targets=("${!crate_of[@]}")
fi
for target in "${targets[@]}"; do
    [ -n "${crate_of[$target]:-}" ] || { echo "fuzz.sh: no fuzz target '$target' (have: ${!crate_of[*]})" >&2; exit 2; }
done

bash "$repo_root/scripts/build-fuzz.sh"

bin_dir=$fuzz_target/x86_64-unknown-linux-gnu/release
summary=()
failed=0
for target in "${targets[@]}"; do
    work=$cache/fuzz-corpus/$target
    artifacts=$cache/fuzz-artifacts/$target
    mkdir -p "$work" "$artifacts"
    log=$(mktemp)
    echo "fuzz.sh: $target for ${seconds} s"
    status=0
    "$bin_dir/$target" "$work" "$repo_root/${crate_of[$target]}/corpus/$target" -max_total_time="$seconds" \
        -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="$artifacts/" >"$log" 2>&1 || status=$?
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    coverage=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1 || true)
    if [ "$status" != 0 ]; then
        failed=1
        tail -n 40 "$log" >&2
        summary+=("$target: FAILED (exit $status) after ${runs:-?} executions; artifacts in $artifacts")
    else
        summary+=("$target: ${runs:-?} executions in ${seconds} s, ${coverage:-cov: ?}")
    fi
    rm -f "$log"
done
printf 'fuzz.sh: %s\n' "${summary[@]}"
exit "$failed"
