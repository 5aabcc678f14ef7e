#!/usr/bin/env bash
# The main job: boots a guest whose disk is served over vfio-user by our server, and shows the disk
# working: SCSI INQUIRY, the block device, and a short fio run.
#
# Usage: scripts/run.sh [--builtin | --server] [run-vm.sh options...]
#   --server    our server (scripts/run-vm.sh --server ''), the default
#   --builtin   the same job on QEMU's own virtio-scsi (the yardstick)
# Other options go to scripts/run-vm.sh (for example --smp 2 --queues 2 --disk null).
set -euo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/common.sh
. "$script_dir/common.sh"

target=(--server '')
passed=()
while [ "$#" -gt 0 ]; do
    case $1 in
        --builtin) target=(--builtin) ;;
        --server) target=(--server '') ;;
        -h | --help)
            usage
            exit 0
            ;;
        *) passed+=("$1") ;;
    esac
    shift
done

guest_script='set -e
sg_inq /dev/sda
lsblk /dev/sda
fio --name=main --filename=/dev/sda --ioengine=libaio --direct=1 --rw=randrw --bs=4k \
    --iodepth=16 --runtime=5 --time_based --eta=never
echo "run.sh: the disk works"'

exec "$script_dir/run-vm.sh" "${target[@]}" "${passed[@]}" -- "$guest_script"
