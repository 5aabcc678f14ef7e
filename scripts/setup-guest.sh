#!/usr/bin/env bash
# Builds, once, the guest environment every VM of this project runs on, and caches it outside the
# repository:
#   ${VUS_CACHE:-/var/cache/vfio-user-scsi}/guest-<key>/
#     root/                   a Debian trixie root holding QEMU 11 from trixie-backports
#     bin/qemu-system-x86_64  runs that QEMU with trixie's own loader and libraries
#     bin/qemu-storage-daemon the same QEMU's storage daemon (the vhost-user-blk yardstick)
#     vmlinux                 the trixie kernel, uncompressed (booted through its PVH entry)
#     vmlinuz                 the same kernel as shipped, a bzImage with its EFI stub (UEFI boots)
#     initramfs.gz            busybox, fio, sg3-utils, util-linux, e2fsprogs, SCSI modules, /init
# <key> is a hash of this script, guest/packages.list and guest/init: changing any rebuilds.
#
# Usage: scripts/setup-guest.sh [--force] [--print-dir] [--quiet]
#   --force      rebuild even if the cache is complete
#   --print-dir  print only the cache directory on stdout (what other scripts use)
#   --quiet      no progress lines
# Environment: VUS_CACHE (cache root), VUS_MIRROR (Debian mirror, default deb.debian.org).
# Needs root on Debian 12 (it installs debootstrap, cpio, zstd, ... with apt-get when missing).
set -euo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
packages_list=$script_dir/guest/packages.list
guest_init=$script_dir/guest/init
cache_root=${VUS_CACHE:-/var/cache/vfio-user-scsi}
mirror=${VUS_MIRROR:-http://deb.debian.org/debian}
suite=trixie

force=0
print_dir=0
quiet=0
for arg in "$@"; do
    case $arg in
        --force) force=1 ;;
        --print-dir) print_dir=1 ;;
        --quiet) quiet=1 ;;
        -h | --help)
            sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "setup-guest: unknown argument '$arg' (try --help)" >&2
            exit 2
            ;;
    esac
done

die() {
    echo "setup-guest: $*" >&2
    exit 1
}

progress() {
    if [ "$quiet" = 0 ]; then
        echo "setup-guest: $*" >&2
    fi
}

key=$(cat "${BASH_SOURCE[0]}" "$packages_list" "$guest_init" | sha256sum | cut -c1-16)
guest_dir=$cache_root/guest-$key
stamp=$guest_dir/complete

if [ "$force" = 0 ] && [ -f "$stamp" ]; then
    if [ "$print_dir" = 1 ]; then echo "$guest_dir"; fi
    exit 0
fi

[ "$(id -u)" = 0 ] || die "building the guest environment needs root (debootstrap, chroot, apt-get)"
mkdir -p "$cache_root" || die "cannot create the cache root $cache_root"

# One builder at a time; a second caller waits and then finds the cache complete.
exec 9>"$cache_root/.lock"
flock 9
if [ "$force" = 0 ] && [ -f "$stamp" ]; then
    if [ "$print_dir" = 1 ]; then echo "$guest_dir"; fi
    exit 0
fi

log=$cache_root/setup-$key.log
: >"$log"
build=$(mktemp -d "$cache_root/.build-$key.XXXXXX")
cleanup() {
    local mounted
    for mounted in "$build/root/proc" "$build/root/sys"; do
        if mountpoint -q "$mounted" 2>/dev/null; then umount -l "$mounted"; fi
    done
    rm -rf "$build"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Runs one build step with its output in the log; on failure names the step and shows the log's tail.
step() {
    local name=$1
    shift
    progress "$name"
    echo "=== $name: $*" >>"$log"
    local started=$SECONDS status=0
    "$@" >>"$log" 2>&1 || status=$?
    if [ "$status" != 0 ]; then
        {
            echo "setup-guest: step '$name' failed (exit $status). Last lines of $log:"
            tail -n 25 "$log" | sed 's/^/  | /'
        } >&2
        exit 1
    fi
    echo "=== $name: done in $((SECONDS - started)) s" >>"$log"
}

list_entries() {
    awk -v kind="$1" '$1 == kind { print $2 }' "$packages_list"
}

install_host_tools() {
    local missing=() tool package
    for tool in debootstrap:debootstrap cpio:cpio zstd:zstd gzip:gzip xz:xz-utils \
        mountpoint:util-linux flock:util-linux; do
        command -v "${tool%%:*}" >/dev/null || missing+=("${tool#*:}")
    done
    # debootstrap verifies trixie's Release file with this keyring.
    [ -f /usr/share/keyrings/debian-archive-keyring.gpg ] || missing+=(debian-archive-keyring)
    [ "${#missing[@]}" = 0 ] && return 0
    export DEBIAN_FRONTEND=noninteractive
    for package in "${missing[@]}"; do echo "installing $package"; done
    apt-get install -y -q --no-install-recommends "${missing[@]}" ||
        { apt-get update -q && apt-get install -y -q --no-install-recommends "${missing[@]}"; }
}

in_root() {
    chroot "$build/root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
        DEBIAN_FRONTEND=noninteractive LC_ALL=C "$@"
}

bootstrap_root() {
    debootstrap --variant=minbase "$suite" "$build/root" "$mirror"
    cat >"$build/root/etc/apt/sources.list" <<EOF
deb $mirror $suite main
deb $mirror $suite-updates main
deb $mirror $suite-backports main
EOF
    # Nothing in the root is ever started as a service, and docs are dead weight.
    printf '#!/bin/sh\nexit 101\n' >"$build/root/usr/sbin/policy-rc.d"
    chmod +x "$build/root/usr/sbin/policy-rc.d"
    cat >"$build/root/etc/dpkg/dpkg.cfg.d/01-vus-nodoc" <<'EOF'
path-exclude=/usr/share/doc/*
path-exclude=/usr/share/man/*
path-exclude=/usr/share/locale/*
EOF
}

install_packages() {
    mount -t proc proc "$build/root/proc"
    in_root apt-get update -q
    # shellcheck disable=SC2046 # one word per package
    in_root apt-get install -y -q --no-install-recommends $(list_entries tool)
    # shellcheck disable=SC2046
    in_root apt-get install -y -q --no-install-recommends -t "$suite-backports" $(list_entries qemu)
    in_root apt-get clean
    umount "$build/root/proc"
}

check_qemu() {
    mkdir -p "$build/bin"
    # Relative to the wrapper, so the finished directory can be renamed into place.
    cat >"$build/bin/qemu-system-x86_64" <<'EOF'
#!/bin/sh
# Runs trixie's QEMU with trixie's own loader and libraries (the host's glibc is older).
root=$(dirname "$0")/../root
exec "$root/lib64/ld-linux-x86-64.so.2" \
    --library-path "$root/usr/lib/x86_64-linux-gnu:$root/lib/x86_64-linux-gnu" \
    "$root/usr/bin/qemu-system-x86_64" -L "$root/usr/share/qemu" -L "$root/usr/share/seabios" "$@"
EOF
    chmod +x "$build/bin/qemu-system-x86_64"
    cat >"$build/bin/qemu-storage-daemon" <<'EOF'
#!/bin/sh
# Runs trixie's qemu-storage-daemon with trixie's own loader and libraries.
root=$(dirname "$0")/../root
exec "$root/lib64/ld-linux-x86-64.so.2" \
    --library-path "$root/usr/lib/x86_64-linux-gnu:$root/lib/x86_64-linux-gnu" \
    "$root/usr/bin/qemu-storage-daemon" "$@"
EOF
    chmod +x "$build/bin/qemu-storage-daemon"
    "$build/bin/qemu-storage-daemon" --version
    "$build/bin/qemu-system-x86_64" --version
    "$build/bin/qemu-system-x86_64" -device help | grep -q '"vfio-user-pci"' ||
        { echo "this QEMU has no vfio-user-pci device"; return 1; }
}

unpack_kernel() {
    local meta image
    meta=$(list_entries kernel)
    image=$(in_root apt-cache depends "$meta" | awk '$1 == "Depends:" && $2 ~ /^linux-image-/ { print $2; exit }')
    [ -n "$image" ] || { echo "cannot resolve the kernel package behind $meta"; return 1; }
    echo "kernel package: $image"
    mkdir -p "$build/root/tmp/kernel-deb"
    in_root sh -c "cd /tmp/kernel-deb && apt-get download -q '$image'"
    mkdir -p "$build/kernel"
    dpkg-deb -x "$build/root/tmp/kernel-deb/"*.deb "$build/kernel"
    rm -rf "$build/root/tmp/kernel-deb"
}

extract_vmlinux() {
    local vmlinuz offset
    vmlinuz=$(find "$build/kernel/boot" -name 'vmlinuz-*' | head -n 1)
    [ -n "$vmlinuz" ] || { echo "no vmlinuz in the kernel package"; return 1; }
    # The bzImage carries the kernel as a zstd frame: it starts at the first zstd magic.
    offset=$(LC_ALL=C grep -obUaP '\x28\xb5\x2f\xfd' "$vmlinuz" | head -n 1 | cut -d: -f1)
    [ -n "$offset" ] || { echo "no zstd payload in $vmlinuz"; return 1; }
    # zstd stops at the 4 size bytes the kernel build appends after the frame, and says so.
    tail -c +"$((offset + 1))" "$vmlinuz" | zstd -dcq >"$build/vmlinux" 2>"$build/zstd.err" || true
    [ "$(head -c 4 "$build/vmlinux" | od -An -tx1 | tr -d ' ')" = 7f454c46 ] ||
        { cat "$build/zstd.err"; echo "the zstd payload did not decompress to an ELF kernel"; return 1; }
    rm -f "$build/zstd.err"
    cp "$vmlinuz" "$build/vmlinuz"
    ls -l "$build/vmlinux" "$build/vmlinuz"
}

# Copies programs of the trixie root, and every library ldd names for them, into the initramfs.
copy_with_libraries() {
    local staging=$build/initramfs program library
    for program in "$@"; do
        install -D -m 0755 "$build/root$program" "$staging$program"
    done
    while read -r library; do
        [ -e "$staging$library" ] && continue
        install -D -m 0755 "$(realpath "$build/root$library")" "$staging$library"
    done < <(in_root ldd "$@" 2>/dev/null | grep -o '^[[:space:]].*/[^ ]*' | grep -o '/[^ ]*' | sort -u)
}

build_initramfs() {
    local staging=$build/initramfs kdir kver entry program name target module path real dir
    mkdir -p "$staging"/{usr/bin,usr/sbin,usr/lib/x86_64-linux-gnu,usr/lib64,proc,sys,dev,tmp,etc,mnt}
    ln -s usr/bin "$staging/bin"
    ln -s usr/sbin "$staging/sbin"
    ln -s usr/lib "$staging/lib"
    ln -s usr/lib64 "$staging/lib64"

    local programs=()
    for entry in $(list_entries bin); do
        # The glob is meant to expand inside the root.
        for program in "$build/root"$entry; do
            [ -e "$program" ] || { echo "no $entry in the trixie root"; return 1; }
            programs+=("${program#"$build/root"}")
        done
    done
    copy_with_libraries "${programs[@]}"
    # busybox's shell runs its own applet before any program of the same name on PATH, so the
    # real tools (blkdiscard -z, mkfs.ext4, ...) are reached through functions, which win.
    mkdir -p "$staging/etc"
    : >"$staging/etc/real-programs.sh"
    for name in $("$staging/usr/bin/busybox" --list); do
        real=
        for dir in /usr/bin /usr/sbin; do
            [ -e "$staging$dir/$name" ] && real=$dir/$name
        done
        if [ -z "$real" ]; then
            ln -s busybox "$staging/usr/bin/$name"
        elif [ "$name" != busybox ]; then
            printf '%s() { %s "$@"; }\n' "$name" "$real" >>"$staging/etc/real-programs.sh"
        fi
    done
    awk '$1 == "link" { print $2 }' "$packages_list" | while IFS='=' read -r name target; do
        ln -sf "$target" "$staging/usr/bin/$name"
    done

    kdir=$(find "$build/kernel/usr/lib/modules" -mindepth 1 -maxdepth 1 -type d | head -n 1)
    kver=$(basename "$kdir")
    # The package ships no modules.dep (its postinst makes it): make one with trixie's depmod.
    mkdir -p "$build/root/tmp/kmods/lib/modules"
    cp -a "$kdir" "$build/root/tmp/kmods/lib/modules/"
    in_root depmod -b /tmp/kmods "$kver"
    local modules_dep=$build/root/tmp/kmods/lib/modules/$kver/modules.dep
    # modules.dep lists a module's dependencies in load-last-first order: load them reversed.
    : >"$build/module-order"
    for module in $(list_entries module); do
        path=$(grep -E "/$module\.ko(\.[a-z]+)?:" "$modules_dep" | head -n 1) ||
            { echo "module $module is not in the kernel package"; return 1; }
        {
            echo "${path#*:}" | tr ' ' '\n' | tac | sed '/^$/d'
            echo "${path%%:*}"
        } >>"$build/module-order"
    done
    : >"$staging/etc/vus-modules"
    mkdir -p "$staging/lib/modules"
    while read -r path; do
        [ -n "$path" ] || continue
        name=$(basename "$path")
        name=${name%%.ko*}.ko
        grep -qx "$name" "$staging/etc/vus-modules" && continue
        case $path in
            *.xz) xz -dc "$kdir/$path" >"$staging/lib/modules/$name" ;;
            *.zst) zstd -dcq "$kdir/$path" >"$staging/lib/modules/$name" ;;
            *.gz) gzip -dc "$kdir/$path" >"$staging/lib/modules/$name" ;;
            *) cp "$kdir/$path" "$staging/lib/modules/$name" ;;
        esac
        echo "$name" >>"$staging/etc/vus-modules"
    done <"$build/module-order"
    echo "modules, in load order: $(tr '\n' ' ' <"$staging/etc/vus-modules")"
    rm -rf "$build/root/tmp/kmods" "$build/module-order"

    install -m 0755 "$guest_init" "$staging/init"
    (cd "$staging" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet) |
        gzip -6 >"$build/initramfs.gz"
    ls -l "$build/initramfs.gz"
}

finish() {
    rm -rf "$build/kernel" "$build/initramfs" "$build/root/var/lib/apt/lists"/*_dists_* \
        "$build/root/var/cache/apt"/*.bin
    echo "$key" >"$build/complete"
    # Another key's stale build never blocks this one; the old cache of this key is replaced whole.
    if [ -e "$guest_dir" ]; then
        mv "$guest_dir" "$build.old"
    fi
    mv "$build" "$guest_dir"
    # Environments of other keys were built from other versions of these files: only a cache.
    local other
    for other in "$build.old" "$cache_root"/guest-* "$cache_root"/setup-*.log; do
        case $other in "$guest_dir" | "$log") ;; *) rm -rf "$other" ;; esac
    done
}

started=$SECONDS
progress "building the guest environment in $guest_dir (log: $log)"
for stale in "$cache_root"/.build-*; do
    # Holding the lock, any other build directory was left by an interrupted run.
    if [ -e "$stale" ] && [ "$stale" != "$build" ]; then rm -rf "$stale"; fi
done
step "install host tools" install_host_tools
step "debootstrap $suite" bootstrap_root
step "install QEMU and guest tools" install_packages
step "check QEMU has vfio-user-pci" check_qemu
step "unpack the guest kernel" unpack_kernel
step "extract vmlinux" extract_vmlinux
step "build the initramfs" build_initramfs
step "publish the cache" finish
trap - EXIT
progress "done in $((SECONDS - started)) s: $guest_dir"
if [ "$print_dir" = 1 ]; then echo "$guest_dir"; fi
