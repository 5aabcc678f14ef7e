#!/usr/bin/env bash
# The full test run (what CI runs through .ci/run): installs what is missing, builds the guest
# environment, then checks formatting, lints, builds the server and runs every test, guest tests
# included. Stops at the first failing step and names it.
#
# Usage: scripts/test.sh   (as root on Debian 12; no arguments, no input needed)
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"
export DEBIAN_FRONTEND=noninteractive
target_dir=${CARGO_TARGET_DIR:-$repo_root/target}
case $target_dir in /*) ;; *) target_dir=$repo_root/$target_dir ;; esac

step() {
    local name=$1 status=0 started=$SECONDS
    shift
    echo "==> test.sh: $name"
    "$@" || status=$?
    if [ "$status" != 0 ]; then
        echo "==> test.sh: FAILED at step '$name' (exit status $status)" >&2
        exit "$status"
    fi
    echo "==> test.sh: $name: ok ($((SECONDS - started)) s)"
}

install_packages() {
    # nasm, dosfstools and mtools build the firmware boot tests' disks.
    local wanted=(shellcheck jq cpio zstd debootstrap nasm dosfstools mtools) missing=() package
    for package in "${wanted[@]}"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'ok installed' ||
            missing+=("$package")
    done
    [ "${#missing[@]}" = 0 ] && return 0
    echo "installing ${missing[*]}"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 ||
        { apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }
}

install_nextest() {
    command -v cargo-nextest >/dev/null || cargo install cargo-nextest --locked
}

shell_lint() {
    shellcheck -x scripts/*.sh scripts/guest/init .ci/run
}

step "install Debian packages" install_packages
step "install cargo-nextest" install_nextest
step "shellcheck" shell_lint
step "build the guest environment" scripts/setup-guest.sh
step "cargo fmt --check" cargo fmt --all --check
step "cargo clippy" cargo clippy --workspace --all-targets -- -D warnings
step "cargo build --release -p server" cargo build --release -p server
export VUS_SERVER_BIN=$target_dir/release/vfio-user-scsi
step "fuzz every target for 20 s" bash scripts/fuzz.sh 20
step "cargo nextest" cargo nextest run --workspace
# Benchmarks are not timed tests: this only shows that every bench script still runs end to end.
step "benchmarks in a tiny configuration (1 round, 2 s)" scripts/bench-report.sh --quick
echo "==> test.sh: all steps passed"
