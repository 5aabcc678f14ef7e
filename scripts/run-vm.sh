#!/usr/bin/env bash
# Boots a guest under QEMU 11, attaches a virtio-scsi disk, runs a shell script inside it and exits
# with that script's exit status. The guest's console streams to stdout.
#
# Usage: scripts/run-vm.sh [TARGET] [OPTIONS] -- 'guest script'
# TARGET (default --builtin):
#   --builtin          QEMU's own virtio-scsi-pci (the yardstick)
#   --socket PATH      -device vfio-user-pci attached to a server already listening on PATH
#   --server 'ARGS'    start vfio-user-scsi --socket <fresh socket> ARGS, attach, stop it afterwards
#                      (ARGS are split as the shell would; the binary is $VUS_SERVER_BIN, or the
#                      one cargo builds, under CARGO_TARGET_DIR when set)
#   --vhost-user-blk   start qemu-storage-daemon exporting the disk as vhost-user-blk and attach
#                      it with vhost-user-blk-pci (the out-of-process yardstick); the guest's disk
#                      is /dev/vda instead of /dev/sda
# OPTIONS:
#   --smp N            guest vCPUs (default 2)
#   --mem MiB          guest RAM, a shareable memfd (default 1024)
#   --queues N         request queues (builtin default: smp; with --server: --num-queues N)
#   --iothreads N      iothreads serving the queues (builtin default 1; with --server:
#                      --iothread io0 ... --iothread io<N-1>; with --vhost-user-blk: N >= 1
#                      runs the export in one iothread, the most QEMU 11 allows; default 0:
#                      the daemon's main loop)
#   --queue-size N     virtqueue size (builtin: virtqueue_size; --server: --queue-size;
#                      --vhost-user-blk: the device's queue-size); default: each device's own
#   --no-poll          iothreads do not poll (builtin and qemu-storage-daemon: poll-max-ns=0;
#                      --server: --poll-max-ns 0); the same as --poll-max-ns 0
#   --poll-max-ns NS   the longest adaptive polling window of every iothread (QEMU's
#                      iothread poll-max-ns=NS, and our --poll-max-ns NS); default: each
#                      program's own (32768 for QEMU, qemu-storage-daemon and our server)
#   --null-latency-us U  with --disk null: every request completes after U microseconds
#                      (null-co latency-ns for QEMU's devices, latency-us for our server)
#   --disk SPEC        FILE (a raw image or block device; both devices serve it with O_DIRECT and
#                      discard), null (1 GiB) or null:SIZE (SIZE in bytes or with a K/M/G/T suffix). Default with --builtin: a sparse temporary 1 GiB
#                      file; with --server: the server's own default disk.
#   --accel tcg|kvm    default tcg (nested KVM is too slow on the project's machines)
#   --timeout S        whole run, boot included (default 300)
#   --reboot           a guest reboot restarts the guest (which runs the script again) instead
#                      of ending QEMU; the script tells the boots apart itself, e.g. by a marker
#                      it writes on the disk
#   --firmware seabios|ovmf
#                      boot from the disk through the firmware, with no -kernel. seabios: --disk FILE
#                      holds a boot program that prints VUS-GUEST-EXIT=N on COM1 itself (the guest
#                      script, optional, is not used). ovmf: the disk is made here, an EFI system
#                      partition with systemd-boot, the guest kernel and the initramfs, and the guest
#                      script runs as usual (no --disk). Firmware debug output is kept in the run's
#                      directory and quoted when the run fails.
# The guest waits for its disk before it runs the script, and finds its path in $VUS_DISK.
# Exit status: the guest script's; 124 on timeout; 125 when the guest never reported a status
# (QEMU error or killed by a signal, boot failure, kernel panic) or the server failed.
# Environment: VUS_SERVER_BIN, VUS_SERVER_LOG (server log path), VUS_CACHE, VUS_TMPDIR,
# VUS_RUN_PIDS (a file where the PIDs of the device side and QEMU are written, one
# 'server|daemon|qemu PID' line each, for benchmarks that read /proc).
set -euo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/common.sh
. "$script_dir/common.sh"
repo_root=$(dirname "$script_dir")

die() {
    echo "run-vm: $*" >&2
    exit 125
}

mode=builtin
socket_path=
server_args=
smp=2
mem=1024
queues=
iothreads=
disk=
queue_size=
poll_max_ns=
null_latency_us=0
accel=tcg
timeout_s=300
reboot=off
firmware=
guest_script=

is_count() {
    [[ $2 =~ ^[0-9]+$ ]] || die "$1 wants a number, got '$2'"
}

while [ "$#" -gt 0 ]; do
    case $1 in
        --builtin) mode=builtin ;;
        --socket) need_value "$@"; mode=socket; socket_path=$2; shift ;;
        --server) need_value "$@"; mode=server; server_args=$2; shift ;;
        --vhost-user-blk) mode=vhost ;;
        --smp) need_value "$@"; is_count "$1" "$2"; smp=$2; shift ;;
        --mem) need_value "$@"; is_count "$1" "$2"; mem=$2; shift ;;
        --queues) need_value "$@"; is_count "$1" "$2"; queues=$2; shift ;;
        --iothreads) need_value "$@"; is_count "$1" "$2"; iothreads=$2; shift ;;
        --disk) need_value "$@"; disk=$2; shift ;;
        --queue-size) need_value "$@"; is_count "$1" "$2"; queue_size=$2; shift ;;
        --no-poll) poll_max_ns=0 ;;
        --poll-max-ns) need_value "$@"; is_count "$1" "$2"; poll_max_ns=$2; shift ;;
        --null-latency-us) need_value "$@"; is_count "$1" "$2"; null_latency_us=$2; shift ;;
        --accel) need_value "$@"; accel=$2; shift ;;
        --timeout) need_value "$@"; is_count "$1" "$2"; timeout_s=$2; shift ;;
        --firmware) need_value "$@"; firmware=$2; shift ;;
        --reboot) reboot=on ;;
        -h | --help) usage; exit 0 ;;
        --)
            shift
            guest_script="$*"
            break
            ;;
        *) die "unknown argument '$1' (try --help)" ;;
    esac
    shift
done
case $firmware in
    '' | ovmf) [ -n "$guest_script" ] || die "no guest script: give it after '--' (try --help)" ;;
    seabios) [ -n "$disk" ] || die "--firmware seabios boots the program on --disk FILE: give one" ;;
    *) die "--firmware wants seabios or ovmf, got '$firmware'" ;;
esac
[ "$firmware" != ovmf ] || [ -z "$disk" ] || die "--firmware ovmf makes its own disk: drop --disk"
case $accel in
    # The baseline x86-64 model: measured here, TCG boots it faster and runs fio ~15% faster than max.
    tcg) cpu=qemu64 ;;
    kvm) cpu=host ;;
    *) die "--accel wants tcg or kvm, got '$accel'" ;;
esac
[ "$smp" -ge 1 ] || die "--smp must be at least 1"

# Disk spec -> disk_kind (null|file|default) and disk_bytes / disk_file.
disk_kind=default
disk_bytes=$((1 << 30))
disk_file=
case $disk in
    '') ;;
    null) disk_kind=null ;;
    null:*)
        disk_kind=null
        disk_bytes=$(numfmt --from=iec "${disk#null:}" 2>/dev/null) ||
            die "--disk null:SIZE: cannot read '${disk#null:}' as a size"
        ;;
    *)
        disk_kind="file"
        disk_file=$(realpath -e "$disk" 2>/dev/null) || die "--disk: '$disk' does not exist"
        ;;
esac
if [ "$mode" = socket ] && [ -n "$disk$queues$iothreads$queue_size" ]; then
    die "--disk, --queues, --queue-size and --iothreads belong to the server's command line with --socket"
fi
if [ "$null_latency_us" != 0 ] && [ "$disk_kind" != null ]; then
    die "--null-latency-us needs --disk null"
fi
# QEMU's iothread object: poll-max-ns=0 turns its adaptive polling off.
iothread_poll=
[ -z "$poll_max_ns" ] || iothread_poll=,poll-max-ns=$poll_max_ns
# QEMU's null-co block driver, with the same latency our server's null disk would have.
null_co() {
    printf '{"driver":"null-co","node-name":"d0","size":%s,"read-zeroes":false,"latency-ns":%s}' \
        "$disk_bytes" "$((null_latency_us * 1000))"
}

guest_dir=$("$script_dir/setup-guest.sh" --print-dir --quiet) ||
    die "the guest environment could not be built (see setup-guest's message above)"
qemu=$guest_dir/bin/qemu-system-x86_64

work=$(mktemp -d "${VUS_TMPDIR:-/var/tmp}/vus-run.XXXXXX")
qemu_pid=
server_pid=
daemon_pid=
tee_pid=
# shellcheck disable=SC2317 # called from the EXIT trap
stop_process() {
    local pid=$1 waited=0
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null && [ "$waited" -lt 50 ]; do
        sleep 0.1
        waited=$((waited + 1))
    done
    kill -KILL "$pid" 2>/dev/null || true
}
# shellcheck disable=SC2317 # the EXIT trap
cleanup() {
    stop_process "$qemu_pid"
    stop_process "$server_pid"
    stop_process "$daemon_pid"
    exec 3>&-
    stop_process "$tee_pid"
    rm -rf "$work"
}
trap cleanup EXIT
trap 'echo "run-vm: interrupted" >&2; exit 130' INT
trap 'echo "run-vm: terminated" >&2; exit 143' TERM

json_string() {
    local s=${1//\\/\\\\}
    printf '"%s"' "${s//\"/\\\"}"
}

qemu_args=(
    -nodefaults -no-user-config -display none -monitor none -serial stdio
    -accel "$accel" -cpu "$cpu" -smp "$smp" -m "$mem"
    -object "memory-backend-memfd,id=mem,size=${mem}M,share=on"
    -machine "q35,memory-backend=mem"
)
[ "$reboot" = on ] || qemu_args+=(-no-reboot)
# no_timer_check: under TCG on a loaded host, the kernel's early check that the IO-APIC timer
# ticks can miss its window and panic ("IO-APIC + timer doesn't work"); the timer works.
kernel_args="console=ttyS0 panic=-1 oops=panic loglevel=4 no_timer_check"
firmware_log=$work/firmware.log
case $firmware in
    '') qemu_args+=(-kernel "$guest_dir/vmlinux" -initrd "$work/initrd" -append "$kernel_args") ;;
    *)
        qemu_args+=(
            -boot c -chardev "file,id=fwlog,path=$firmware_log"
            -device "isa-debugcon,iobase=0x402,chardev=fwlog"
            -device "isa-debug-exit,iobase=0xf4,iosize=0x04"
        )
        ;;
esac
if [ "$firmware" = ovmf ]; then
    ovmf_dir=$guest_dir/root/usr/share/OVMF
    cp "$ovmf_dir/OVMF_VARS_4M.fd" "$work/ovmf-vars.fd"
    qemu_args+=(
        -drive "if=pflash,format=raw,unit=0,readonly=on,file=$ovmf_dir/OVMF_CODE_4M.fd"
        -drive "if=pflash,format=raw,unit=1,file=$work/ovmf-vars.fd"
    )
    disk_kind="file"
    disk_file=$work/esp.raw
fi

case $mode in
    builtin)
        queues=${queues:-$smp}
        iothreads=${iothreads:-1}
        [ "$queues" -ge 1 ] || die "--queues must be at least 1"
        mapping=
        for ((i = 0; i < iothreads; i++)); do
            qemu_args+=(-object "iothread,id=iot$i$iothread_poll")
            mapping+="${mapping:+,}{\"iothread\":\"iot$i\"}"
        done
        hba="{\"driver\":\"virtio-scsi-pci\",\"id\":\"scsi0\",\"num_queues\":$queues${queue_size:+,\"virtqueue_size\":$queue_size}"
        [ -z "$mapping" ] || hba+=",\"iothread-vq-mapping\":[$mapping]"
        qemu_args+=(-device "$hba}")
        if [ "$disk_kind" = default ]; then
            disk_kind="file"
            disk_file=$work/disk.raw
            truncate -s 1G "$disk_file"
        fi
        if [ "$disk_kind" = null ]; then
            qemu_args+=(-blockdev "$(null_co)")
        else
            qemu_args+=(-blockdev "{\"driver\":\"raw\",\"node-name\":\"d0\",\"cache\":{\"direct\":true},\"discard\":\"unmap\",\"file\":{\"driver\":\"file\",\"filename\":$(json_string "$disk_file"),\"aio\":\"io_uring\"}}")
        fi
        qemu_args+=(-device '{"driver":"scsi-hd","drive":"d0","bus":"scsi0.0"}')
        ;;
    vhost)
        queues=${queues:-$smp}
        [ "$queues" -ge 1 ] || die "--queues must be at least 1"
        qemu_args+=(-chardev "socket,id=c0,path=$work/vhost.sock"
            -device "vhost-user-blk-pci,chardev=c0,num-queues=$queues${queue_size:+,queue-size=$queue_size}")
        ;;
    socket | server)
        if [ "$mode" = server ]; then
            socket_path=$work/vus.sock
        fi
        qemu_args+=(-device "{\"driver\":\"vfio-user-pci\",\"id\":\"vus0\",\"socket\":{\"type\":\"unix\",\"path\":$(json_string "$socket_path")}}")
        ;;
esac

server_log=
start_server() {
    build_server
    local server_bin=$VUS_SERVER_BIN
    [ -x "$server_bin" ] || die "no server binary at $server_bin"
    local args=()
    eval "args=($server_args)" || die "--server: cannot split '$server_args' into arguments"
    case $disk_kind in
        null) args+=(--disk "null,size=$disk_bytes,latency-us=$null_latency_us") ;;
        # The built-in device's settings (cache direct, discard unmap), so comparisons are fair.
        file) args+=(--disk "path=$disk_file,cache=none,discard=unmap") ;;
    esac
    [ -z "$queues" ] || args+=(--num-queues "$queues")
    [ -z "$queue_size" ] || args+=(--queue-size "$queue_size")
    [ -z "$poll_max_ns" ] || args+=(--poll-max-ns "$poll_max_ns")
    for ((i = 0; i < ${iothreads:-0}; i++)); do
        args+=(--iothread "io$i")
    done
    server_log=${VUS_SERVER_LOG:-$work/server.log}
    echo "run-vm: starting $server_bin --socket $socket_path ${args[*]} (log: $server_log)" >&2
    "$server_bin" --socket "$socket_path" "${args[@]}" >"$server_log" 2>&1 </dev/null &
    server_pid=$!
    [ -z "${VUS_RUN_PIDS:-}" ] || echo "server $server_pid" >>"$VUS_RUN_PIDS"
    local waited=0
    while [ ! -S "$socket_path" ]; do
        if ! kill -0 "$server_pid" 2>/dev/null; then
            local status=0
            wait "$server_pid" || status=$?
            server_pid=
            show_server_log
            die "the server exited with status $status before it listened on $socket_path"
        fi
        [ "$waited" -lt 100 ] || { show_server_log; die "the server did not create $socket_path within 10 s"; }
        sleep 0.1
        waited=$((waited + 1))
    done
}

# qemu-storage-daemon with the same backend QEMU's own device would use, exported on a socket.
start_daemon() {
    local daemon=$guest_dir/bin/qemu-storage-daemon node export_spec
    case $disk_kind in
        null) node=$(null_co) ;;
        *)
            if [ "$disk_kind" = default ]; then
                disk_file=$work/disk.raw
                truncate -s 1G "$disk_file"
            fi
            node="{\"driver\":\"raw\",\"node-name\":\"d0\",\"cache\":{\"direct\":true},\"discard\":\"unmap\",\"file\":{\"driver\":\"file\",\"filename\":$(json_string "$disk_file"),\"aio\":\"io_uring\"}}"
            ;;
    esac
    local args=(--blockdev "$node")
    export_spec="{\"type\":\"vhost-user-blk\",\"id\":\"e0\",\"node-name\":\"d0\",\"writable\":true,\"num-queues\":$queues,\"addr\":{\"type\":\"unix\",\"path\":$(json_string "$work/vhost.sock")}"
    # QEMU 11's vhost-user-blk export refuses a list of iothreads ("does not support
    # multi-threading"): one iothread is its most.
    if [ "${iothreads:-0}" -ge 1 ]; then
        [ "$iothreads" = 1 ] ||
            echo "run-vm: qemu-storage-daemon's vhost-user-blk export runs in one iothread, not $iothreads" >&2
        args+=(--object "iothread,id=iot0$iothread_poll")
        export_spec+=",\"iothread\":\"iot0\""
    fi
    args+=(--export "$export_spec}")
    server_log=${VUS_SERVER_LOG:-$work/daemon.log}
    echo "run-vm: starting qemu-storage-daemon ${args[*]} (log: $server_log)" >&2
    "$daemon" "${args[@]}" >"$server_log" 2>&1 </dev/null &
    daemon_pid=$!
    local waited=0
    while [ ! -S "$work/vhost.sock" ]; do
        kill -0 "$daemon_pid" 2>/dev/null || { show_server_log; die "qemu-storage-daemon exited before it listened"; }
        [ "$waited" -lt 100 ] || { show_server_log; die "qemu-storage-daemon did not listen within 10 s"; }
        sleep 0.1
        waited=$((waited + 1))
    done
    [ -z "${VUS_RUN_PIDS:-}" ] || echo "daemon $daemon_pid" >>"$VUS_RUN_PIDS"
}

show_server_log() {
    echo "run-vm: last lines of the server log $server_log:" >&2
    tail -n 20 "$server_log" 2>/dev/null | sed 's/^/  | /' >&2
}

# Returns 0 if the server was still running and stopped cleanly; says why otherwise.
stop_server() {
    local status=0
    if ! kill -0 "$server_pid" 2>/dev/null; then
        wait "$server_pid" || status=$?
        server_pid=
        show_server_log
        echo "run-vm: the server died during the run (exit status $status)" >&2
        return 1
    fi
    kill -TERM "$server_pid"
    # The server bounds its own exit (--shutdown-timeout, 10 s by default, after which it exits 1
    # naming the step it was stuck in); waiting longer catches a server that overran that bound.
    local waited=0
    while kill -0 "$server_pid" 2>/dev/null && [ "$waited" -lt 300 ]; do
        sleep 0.1
        waited=$((waited + 1))
    done
    if kill -0 "$server_pid" 2>/dev/null; then
        show_server_log
        echo "run-vm: the server did not exit within 30 s of SIGTERM" >&2
        return 1
    fi
    wait "$server_pid" || status=$?
    server_pid=
    if [ "$status" != 0 ]; then
        show_server_log
        echo "run-vm: the server exited with status $status when stopped" >&2
        return 1
    fi
}

# The per-run archive: Linux unpacks concatenated initramfs archives in order.
mkdir -p "$work/extra"
printf '%s\n' "$guest_script" >"$work/extra/run-script.sh"
guest_disk=/dev/sda
[ "$mode" = vhost ] && guest_disk=/dev/vda
printf 'VUS_WAIT_DISK=%s\nVUS_WAIT_SECS=%s\nexport VUS_DISK=%s\n' "$guest_disk" 60 "$guest_disk" >"$work/extra/run-env.sh"
(cd "$work/extra" && printf '%s\n' run-script.sh run-env.sh | cpio -o -H newc --quiet) |
    gzip -1 >"$work/extra.gz"
base_initrd=$guest_dir/initramfs.gz
if [ -z "$firmware" ]; then
    # Under TCG the kernel spends about 14 s of each boot inflating the gzip archive, and well
    # under 1 s unpacking it uncompressed: the cache keeps an inflated copy beside the archive,
    # made once (renamed into place, so that concurrent runs never read half of it). The
    # firmware boots keep the small archive, which they read from the disk.
    base_initrd=$guest_dir/initramfs.cpio
    if [ ! -f "$base_initrd" ]; then
        inflating=$(mktemp "$base_initrd.XXXXXX")
        if ! { gzip -dc "$guest_dir/initramfs.gz" >"$inflating" && mv "$inflating" "$base_initrd"; }; then
            rm -f "$inflating"
            die "cannot inflate $guest_dir/initramfs.gz into $base_initrd"
        fi
    fi
fi
cat "$base_initrd" "$work/extra.gz" >"$work/initrd"

# A disk with one EFI system partition (MBR type 0xef, from 1 MiB) holding systemd-boot as the
# removable-media loader, which boots the guest kernel's EFI stub with the run's initramfs.
make_esp_disk() {
    local out=$1 lba=2048 sectors=$((128 * 2048))
    local esp="$out@@$((lba * 512))"
    truncate -s $(((lba + sectors) * 512)) "$out"
    le32() { printf '\\x%02x' $(($1 & 255)) $(($1 >> 8 & 255)) $(($1 >> 16 & 255)) $(($1 >> 24 & 255)); }
    # shellcheck disable=SC2059 # the format is built from escapes on purpose
    printf "\\x00\\xfe\\xff\\xff\\xef\\xfe\\xff\\xff$(le32 $lba)$(le32 $sectors)" |
        dd of="$out" bs=1 seek=446 conv=notrunc status=none
    printf '\x55\xaa' | dd of="$out" bs=1 seek=510 conv=notrunc status=none
    mkfs.vfat --offset "$lba" -n VUS-ESP "$out" $((sectors / 2)) >/dev/null
    mmd -i "$esp" ::/EFI ::/EFI/BOOT ::/loader ::/loader/entries
    mcopy -i "$esp" "$guest_dir/root/usr/lib/systemd/boot/efi/systemd-bootx64.efi" ::/EFI/BOOT/BOOTX64.EFI
    mcopy -i "$esp" "$guest_dir/vmlinuz" ::/vmlinuz
    mcopy -i "$esp" "$work/initrd" ::/initrd
    printf 'timeout 0\ndefault vus.conf\n' | mcopy -i "$esp" - ::/loader/loader.conf
    printf 'title vfio-user-scsi guest\nlinux /vmlinuz\ninitrd /initrd\noptions %s\n' "$kernel_args" |
        mcopy -i "$esp" - ::/loader/entries/vus.conf
}
if [ "$firmware" = ovmf ]; then
    for tool in mkfs.vfat mmd mcopy; do
        command -v "$tool" >/dev/null || die "--firmware ovmf needs $tool (Debian dosfstools, mtools)"
    done
    make_esp_disk "$disk_file"
fi

if [ "$mode" = server ]; then
    start_server
elif [ "$mode" = vhost ]; then
    start_daemon
elif [ "$mode" = socket ]; then
    [ -S "$socket_path" ] || die "--socket: no server is listening on '$socket_path'"
fi

console_log=$work/console.log
mkfifo "$work/console"
# This shell holds the FIFO open for writing (fd 3) so that the reader never blocks in open, even
# if QEMU does not start; closing it after QEMU ends gives the reader its end of file.
exec 3<>"$work/console"
# sed -u passes each line on at once (tr would hold 4 KiB), so that a test reacts to a marker
# while the guest waits for it.
sed -u 's/\r//g' <"$work/console" 3>&- | tee "$console_log" 3>&- &
tee_pid=$!
started=$SECONDS
qemu_status=0
timeout --kill-after=5 "$timeout_s" "$qemu" "${qemu_args[@]}" >"$work/console" 2>&1 </dev/null 3>&- &
qemu_pid=$!
echo "run-vm: QEMU started" >&2
[ -z "${VUS_RUN_PIDS:-}" ] || echo "qemu $qemu_pid" >>"$VUS_RUN_PIDS"
wait "$qemu_pid" || qemu_status=$?
qemu_pid=
exec 3>&-
wait "$tee_pid" || true
tee_pid=

server_ok=1
if [ "$mode" = server ]; then
    stop_server || server_ok=0
elif [ "$mode" = vhost ]; then
    stop_process "$daemon_pid"
    daemon_pid=
fi

marker=$(grep -a -o '^VUS-GUEST-EXIT=[0-9]*' "$console_log" | tail -n 1 || true)
# How far the guest got, from the init's progress lines.
guest_stage() {
    if grep -q -a '^VUS-GUEST-RUN' "$console_log"; then
        echo "while the guest script ran"
    elif grep -q -a '^VUS-GUEST-INIT: waiting' "$console_log"; then
        echo "after boot, while the guest waited for its disk /dev/sda"
    elif grep -q -a '^VUS-GUEST-INIT' "$console_log"; then
        echo "after boot, before the guest script started"
    else
        echo "before the guest's init ran: the guest did not boot"
    fi
}
# The server's log goes with the temporary directory: quote it whenever the run failed.
finish() {
    if [ "$1" != 0 ] && [ "$mode" = server ] && [ "$server_ok" = 1 ]; then
        show_server_log
    fi
    if [ "$1" != 0 ] && [ -n "$firmware" ]; then
        echo "run-vm: last lines of the firmware's debug output:" >&2
        tail -n 30 "$firmware_log" 2>/dev/null | tr -d '\r' | sed 's/^/  | /' >&2
    fi
    exit "$1"
}
ran_s=$((SECONDS - started))
# timeout(1) exits 124 when time ran out, or 137 when QEMU then ignored SIGTERM; a QEMU killed
# by a signal from elsewhere makes timeout exit 128 + that signal, before its time is up.
if [ "$qemu_status" = 124 ] || { [ "$qemu_status" = 137 ] && [ "$ran_s" -ge "$timeout_s" ]; }; then
    echo "run-vm: TIMEOUT after $timeout_s s, $(guest_stage)" >&2
    finish 124
fi
if [ "$qemu_status" -gt 128 ]; then
    signal=$(kill -l "$qemu_status" 2>/dev/null || echo "?")
    echo "run-vm: QEMU KILLED by signal $((qemu_status - 128)) (SIG$signal, exit status $qemu_status) after $ran_s s, $(guest_stage)" >&2
    finish 125
fi
if [ -z "$marker" ]; then
    if grep -q -a 'Kernel panic' "$console_log"; then
        echo "run-vm: GUEST PANIC: the guest kernel panicked, $(guest_stage)" >&2
    elif [ "$qemu_status" != 0 ]; then
        echo "run-vm: QEMU FAILED with exit status $qemu_status, $(guest_stage) (its message is above)" >&2
    else
        echo "run-vm: the guest stopped without reporting the script's status, $(guest_stage)" >&2
    fi
    finish 125
fi
guest_status=${marker#VUS-GUEST-EXIT=}
echo "run-vm: guest script exited with status $guest_status after $((SECONDS - started)) s" >&2
if [ "$server_ok" = 0 ] && [ "$guest_status" = 0 ]; then
    finish 125
fi
finish "$guest_status"
