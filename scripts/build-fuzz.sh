#!/usr/bin/env bash
# Builds the server's cargo-fuzz targets (server/fuzz) without running them; running them for
# long is the robustness work's job: scripts/build-fuzz.sh && cargo fuzz run message ...
# Installs cargo-fuzz if it is missing. Uses a nightly toolchain when rustup has one, otherwise
# lets the stable compiler accept cargo-fuzz's -Z flags (RUSTC_BOOTSTRAP=1). No sanitizer: the
# decoder is safe Rust, and libFuzzer's coverage and crash detection is what we want here.
#
# Usage: scripts/build-fuzz.sh   (artifacts under $CARGO_TARGET_DIR/fuzz, default target/fuzz)
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
target_dir=${CARGO_TARGET_DIR:-$repo_root/target}
case $target_dir in /*) ;; *) target_dir=$repo_root/$target_dir ;; esac

command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

toolchain=()
if rustup run nightly rustc --version >/dev/null 2>&1; then
    toolchain=(+nightly)
else
    export RUSTC_BOOTSTRAP=1
fi

cd "$repo_root/server"
# A target directory of its own: the fuzz flags would otherwise invalidate the normal build.
CARGO_TARGET_DIR=$target_dir/fuzz cargo "${toolchain[@]}" fuzz build --sanitizer none message
