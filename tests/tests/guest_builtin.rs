//! End-to-end through QEMU's built-in virtio-scsi (`run-vm.sh --builtin`): the harness itself works,
//! so that a failing guest test of our device points at the device, not at the harness.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;

use tests::guest::run_vm;

const DISK_BYTES: u64 = 64 << 20;
const BLOCK: u64 = 512;
/// Where the guest writes its pattern, in 4 KiB blocks.
const PATTERN_OFFSET_4K: u64 = 1000;
const PATTERN_LINES: usize = 4096;

/// The pattern both the guest (busybox awk) and this test produce: 16-byte numbered lines.
fn pattern() -> Vec<u8> {
    (0..PATTERN_LINES)
        .flat_map(|n| format!("vus-{n:011}\n").into_bytes())
        .collect()
}

fn sparse_disk() -> tempfile::NamedTempFile {
    // /var/tmp, not /tmp: QEMU opens the image with O_DIRECT, which a tmpfs may refuse.
    let disk = tempfile::Builder::new()
        .prefix("vus-guest-builtin")
        .suffix(".raw")
        .tempfile_in("/var/tmp")
        .unwrap();
    disk.as_file().set_len(DISK_BYTES).unwrap();
    disk
}

/// Where the host writes its pattern before boot, for the guest to read.
const HOST_PATTERN_OFFSET_4K: u64 = 768;

#[test]
fn guest_builtin_capacity_and_patterns_round_trip() {
    let disk = sparse_disk();
    let expected = pattern();
    let blocks_4k = expected.len() / 4096;
    OpenOptions::new()
        .write(true)
        .open(disk.path())
        .unwrap()
        .write_all_at(&expected, HOST_PATTERN_OFFSET_4K * 4096)
        .unwrap();
    let script = format!(
        "set -e
sg_readcap /dev/sda
awk 'BEGIN {{ for (n = 0; n < {PATTERN_LINES}; n++) printf \"vus-%011d\\n\", n }}' > /tmp/pattern
dd if=/dev/sda of=/tmp/host bs=4096 skip={HOST_PATTERN_OFFSET_4K} count={blocks_4k} iflag=direct
if cmp /tmp/pattern /tmp/host; then echo HOST-PATTERN-OK; else echo HOST-PATTERN-MISMATCH; exit 1; fi
dd if=/tmp/pattern of=/dev/sda bs=4096 seek={PATTERN_OFFSET_4K} oflag=direct conv=notrunc
echo 3 > /proc/sys/vm/drop_caches
dd if=/dev/sda of=/tmp/back bs=4096 skip={PATTERN_OFFSET_4K} count={blocks_4k} iflag=direct
if cmp /tmp/pattern /tmp/back; then echo PATTERN-READ-BACK-OK; else echo PATTERN-MISMATCH; exit 1; fi"
    );
    let run = run_vm(
        &["--builtin", "--disk", disk.path().to_str().unwrap()],
        &script,
    )
    .unwrap();
    run.assert_status(0);
    run.assert_line_contains(&format!("Number of logical blocks={}", DISK_BYTES / BLOCK));
    run.assert_line_contains(&format!("Logical block length={BLOCK} bytes"));
    run.assert_line_contains(&format!("Device size: {DISK_BYTES} bytes"));
    run.assert_line_contains("HOST-PATTERN-OK");
    run.assert_line_contains("PATTERN-READ-BACK-OK");

    // The guest's writes landed in the backing file, at the offset it wrote them to.
    let mut on_disk = vec![0u8; expected.len()];
    File::open(disk.path())
        .unwrap()
        .read_exact_at(&mut on_disk, PATTERN_OFFSET_4K * 4096)
        .unwrap();
    assert!(
        on_disk == expected,
        "the backing file does not hold the guest's pattern at 4 KiB block {PATTERN_OFFSET_4K}"
    );
}

#[test]
fn guest_builtin_script_exit_status_propagates() {
    let run = run_vm(
        &["--builtin", "--disk", "null"],
        "echo about to exit 3; exit 3",
    )
    .unwrap();
    run.assert_status(3);
    run.assert_line_contains("VUS-GUEST-EXIT=3");
}
