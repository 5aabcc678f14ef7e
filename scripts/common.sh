# shellcheck shell=bash
# Sourced by the scripts beside it: argument handling they all share. Each script defines die().

# Prints the calling script's help: its header comment, down to `set -euo pipefail`.
usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
}

# Fails unless the option in $1 has a value after it.
need_value() {
    [ "$#" -ge 2 ] || die "$1 needs a value (try --help)"
}

# Builds the release server unless VUS_SERVER_BIN already names a binary, and exports
# VUS_SERVER_BIN as the one cargo wrote: under CARGO_TARGET_DIR when it is set, as cargo does.
# VUS_SERVER_FEATURES, when set, lists cargo features (e.g. count-allocations).
build_server() {
    [ -n "${VUS_SERVER_BIN:-}" ] && return 0
    local repo_root target_dir features=()
    repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    target_dir=${CARGO_TARGET_DIR:-$repo_root/target}
    case $target_dir in /*) ;; *) target_dir=$repo_root/$target_dir ;; esac
    [ -z "${VUS_SERVER_FEATURES:-}" ] || features=(--features "$VUS_SERVER_FEATURES")
    echo "building the server (cargo build --release -p server ${features[*]})" >&2
    (cd "$repo_root" && cargo build --release -q -p server "${features[@]}") >&2 ||
        die "the server does not build (cargo build --release -p server ${features[*]})"
    export VUS_SERVER_BIN=$target_dir/release/vfio-user-scsi
}
