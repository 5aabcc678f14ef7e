#!/usr/bin/env bash
# Builds the cargo-fuzz targets without running them (scripts/fuzz.sh runs them): the vfio-user
# library's (server/vfio-user/fuzz: the message decoder, the connection's buffered reads) and the
# application's (server/fuzz: a whole connection against the real device, descriptor chains over
# hostile guest memory, control-queue TMFs and AN, config space/BARs/MSI-X and the common-config
# state machine, the SCSI emulation, the --disk spec, the mapping).
# Installs cargo-fuzz if it is missing. Uses a nightly toolchain when rustup has one, otherwise
# lets the stable compiler accept cargo-fuzz's -Z flags (RUSTC_BOOTSTRAP=1). No sanitizer: the
# parsers are safe Rust, and libFuzzer's coverage and crash detection is what we want here.
#
# Usage: scripts/build-fuzz.sh   (artifacts under $VUS_FUZZ_TARGET, by default in the cache
#        outside the repository: a fresh clone reuses the last build, cargo rebuilds what changed)
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
fuzz_target=${VUS_FUZZ_TARGET:-${VUS_CACHE:-/var/cache/vfio-user-scsi}/fuzz-target}
mkdir -p "$fuzz_target"

command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

toolchain=()
if rustup run nightly rustc --version >/dev/null 2>&1; then
    toolchain=(+nightly)
else
    export RUSTC_BOOTSTRAP=1
fi

for crate in server/vfio-user server; do
    cd "$repo_root/$crate"
    # A target directory of its own: the fuzz flags would otherwise invalidate the normal build.
    CARGO_TARGET_DIR=$fuzz_target cargo "${toolchain[@]}" fuzz build --sanitizer none
done
