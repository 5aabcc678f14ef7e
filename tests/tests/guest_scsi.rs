//! End-to-end through our server: a Linux guest under QEMU 11 attached with `vfio-user-pci`
//! (`run-vm.sh --server`) finds the disks with their sizes and identity, does I/O on all queues,
//! discards, keeps read-only LUNs read-only, and its data lands in and survives in the backing
//! files.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use tests::guest::{
    interrupt_total, pattern, pattern_command, run_script, run_vm, sparse_disk, GuestRun,
    SCRIPT_PRELUDE,
};

/// A whole run, boot included; well below nextest's limit so that a hung guest fails with
/// run-vm.sh's own diagnosis.
const RUN_TIMEOUT_S: &str = "150";
/// Lines of a test pattern: with any 4-character tag, a line is 17 bytes, so the pattern is
/// exactly 17 blocks of 4 KiB.
const PATTERN_LINES: usize = 4096;
const BLOCK_4K: u64 = 4096;

/// Boots a guest on our server started with `server_args`, runs `body` after the prelude.
fn boot(server_args: &str, options: &[&str], body: &str) -> GuestRun {
    let mut args = vec!["--timeout", RUN_TIMEOUT_S, "--server", server_args];
    args.extend_from_slice(options);
    run_vm(&args, &format!("{SCRIPT_PRELUDE}{body}")).unwrap()
}

fn path_of(disk: &tempfile::NamedTempFile) -> &str {
    disk.path().to_str().unwrap()
}

fn pattern_blocks() -> u64 {
    pattern("tag0", PATTERN_LINES).len() as u64 / BLOCK_4K
}

/// Guest commands: write `pattern(tag)` to `device` at 4 KiB block `block` with O_DIRECT.
fn write_pattern(tag: &str, device: &str, block: u64) -> String {
    format!(
        "{} > /tmp/{tag}
dd if=/tmp/{tag} of={device} bs=4096 seek={block} oflag=direct conv=notrunc 2>/dev/null
",
        pattern_command(tag, PATTERN_LINES)
    )
}

/// Guest commands: read `device` at 4 KiB block `block` with O_DIRECT, print
/// `PATTERN-{tag}-MATCHES` if it holds `pattern(tag)` and fail the script otherwise.
fn check_pattern(tag: &str, device: &str, block: u64) -> String {
    format!(
        "{} > /tmp/{tag}.want
dd if={device} of=/tmp/{tag}.got bs=4096 skip={block} count={} iflag=direct 2>/dev/null
if cmp /tmp/{tag}.want /tmp/{tag}.got; then echo PATTERN-{tag}-MATCHES; else echo PATTERN-{tag}-DIFFERS; exit 1; fi
",
        pattern_command(tag, PATTERN_LINES),
        pattern_blocks()
    )
}

fn read_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    File::open(path)
        .unwrap()
        .read_exact_at(&mut data, offset)
        .unwrap();
    data
}

fn write_at(path: &Path, offset: u64, data: &[u8]) {
    OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .write_all_at(data, offset)
        .unwrap();
}

/// Panics unless the file holds `expected` at `offset`, naming the first byte that differs.
fn assert_file_holds(path: &Path, offset: u64, expected: &[u8], what: &str) {
    let found = read_at(path, offset, expected.len());
    if let Some(at) = found.iter().zip(expected).position(|(f, e)| f != e) {
        let end = (at + 24).min(expected.len());
        panic!(
            "{}: {what} expected at byte {offset}, but byte {} differs: found {:?}, expected {:?}",
            path.display(),
            offset + at as u64,
            String::from_utf8_lossy(&found[at..end]),
            String::from_utf8_lossy(&expected[at..end]),
        );
    }
}

fn assert_file_holds_pattern(path: &Path, tag: &str, block: u64) {
    let what = format!("the guest's pattern {tag:?} (4 KiB block {block})");
    assert_file_holds(path, block * BLOCK_4K, &pattern(tag, PATTERN_LINES), &what);
}

#[test]
fn guest_scsi_disks_report_size_and_identity() {
    let disk0 = sparse_disk("guest-identity-lun0", 64 << 20).unwrap();
    let disk1 = sparse_disk("guest-identity-lun1", 32 << 20).unwrap();
    let server = format!(
        "--disk path={},serial=VUSGUEST0001,discard=unmap \
         --disk path={},lun=1,logical-block-size=4096",
        path_of(&disk0),
        path_of(&disk1)
    );
    let run = boot(
        &server,
        &[],
        "lun0=$(lun_disk 0)
lun1=$(lun_disk 1)
section readcap-lun0; sg_readcap -l $lun0
section readcap-lun1; sg_readcap -l $lun1
section sysfs
echo LUN0-SECTORS=$(cat /sys/block/${lun0#/dev/}/size)
echo LUN1-SECTORS=$(cat /sys/block/${lun1#/dev/}/size)
echo LUN1-LOGICAL-BLOCK=$(cat /sys/block/${lun1#/dev/}/queue/logical_block_size)
section inquiry; sg_inq $lun0
for page in 0x00 0x80 0x83 0xb0 0xb1 0xb2; do section vpd-$page-lun0; sg_vpd --page=$page $lun0; done
section vpd-0xb0-lun1; sg_vpd --page=0xb0 $lun1
section vpd-0xb2-lun1; sg_vpd --page=0xb2 $lun1
section luns; sg_luns $lun0
section end",
    );
    run.assert_status(0);
    // /sys/block/*/size counts 512-byte sectors whatever the logical block size.
    run.assert_line("LUN0-SECTORS=131072");
    run.assert_line("LUN1-SECTORS=65536");
    run.assert_line("LUN1-LOGICAL-BLOCK=4096");

    let expected: &[(&str, &[&str])] = &[
        (
            "readcap-lun0",
            &[
                "Last LBA=131071 (0x1ffff), Number of logical blocks=131072",
                "Logical block length=512 bytes",
                "Device size: 67108864 bytes",
                "lbpme=1, lbprz=1",
            ],
        ),
        (
            "readcap-lun1",
            &[
                "Last LBA=8191 (0x1fff), Number of logical blocks=8192",
                "Logical block length=4096 bytes",
                "Device size: 33554432 bytes",
                "lbpme=0, lbprz=0",
            ],
        ),
        (
            "inquiry",
            &[
                "Vendor identification: VFIOUSER",
                "Product identification: VIRTUAL DISK",
                "Peripheral device type: disk",
            ],
        ),
        (
            "vpd-0x00-lun0",
            &[
                "Supported VPD pages",
                "Unit serial number",
                "Device identification",
                "Block limits (SBC)",
                "Block device characteristics (SBC)",
                "Logical block provisioning (SBC)",
            ],
        ),
        ("vpd-0x80-lun0", &["Product serial number: VUSGUEST0001"]),
        (
            "vpd-0x83-lun0",
            &[
                "vendor id: VFIOUSER",
                "vendor specific: VUSGUEST0001",
                "designator type: NAA",
            ],
        ),
        // 8 MiB transfers, UNMAP and WRITE SAME of up to 1 GiB, 256 UNMAP descriptors.
        (
            "vpd-0xb0-lun0",
            &[
                "Maximum transfer length: 0x4000",
                "Maximum unmap LBA count: 0x200000",
                "Maximum unmap block descriptor count: 0x100",
                "Maximum write same length: 0x200000",
            ],
        ),
        ("vpd-0xb0-lun1", &["Maximum transfer length: 0x800"]),
        ("vpd-0xb1-lun0", &["Non-rotating medium"]),
        (
            "vpd-0xb2-lun0",
            &[
                "LBPU=1",
                "LBPWS=1",
                "LBPWS10=1",
                "LBPRZ=0x1",
                "Provisioning type: thin provisioned",
            ],
        ),
        // discard=ignore is the default: no provisioning to report.
        (
            "vpd-0xb2-lun1",
            &["LBPU=0", "not known or fully provisioned"],
        ),
        (
            "luns",
            &["2 lun entries", "0000000000000000", "0001000000000000"],
        ),
    ];
    for (section, needles) in expected {
        for needle in *needles {
            run.assert_section_contains(section, needle);
        }
    }
}

#[test]
fn guest_scsi_dd_patterns_reach_the_backing_file() {
    const DISK_BYTES: u64 = 64 << 20;
    let disk = sparse_disk("guest-dd", DISK_BYTES).unwrap();
    let host_block = 768;
    let guest_block = 1000;
    // The last blocks of the disk: the mapping holds up to the end of the device.
    let tail_block = DISK_BYTES / BLOCK_4K - pattern_blocks();
    write_at(
        disk.path(),
        host_block * BLOCK_4K,
        &pattern("host", PATTERN_LINES),
    );
    let script = [
        check_pattern("host", "/dev/sda", host_block),
        write_pattern("gues", "/dev/sda", guest_block),
        write_pattern("tail", "/dev/sda", tail_block),
        "echo 3 > /proc/sys/vm/drop_caches\n".to_string(),
        check_pattern("gues", "/dev/sda", guest_block),
        check_pattern("tail", "/dev/sda", tail_block),
    ]
    .concat();
    let run = boot(
        &format!("--disk path={},cache=none", path_of(&disk)),
        &[],
        &script,
    );
    run.assert_status(0);
    run.assert_line("PATTERN-host-MATCHES");
    run.assert_line("PATTERN-gues-MATCHES");
    run.assert_line("PATTERN-tail-MATCHES");
    assert_file_holds_pattern(disk.path(), "gues", guest_block);
    assert_file_holds_pattern(disk.path(), "tail", tail_block);
}

#[test]
fn guest_scsi_ext4_survives_remount_and_fsck() {
    let disk = sparse_disk("guest-ext4", 64 << 20).unwrap();
    let run = boot(
        &format!("--disk path={},discard=unmap", path_of(&disk)),
        &[],
        "section mkfs; mkfs.ext4 -q -F /dev/sda
mkdir -p /mnt
mount -t ext4 /dev/sda /mnt
mkdir /mnt/dir
for i in 1 2 3 4 5 6; do dd if=/dev/urandom of=/mnt/dir/file$i bs=64k count=$((i * 4)) 2>/dev/null; done
(cd /mnt/dir && md5sum file*) > /tmp/sums
umount /mnt
echo 3 > /proc/sys/vm/drop_caches
mount -t ext4 /dev/sda /mnt
section checksums
(cd /mnt/dir && md5sum -c /tmp/sums)
echo FILES-$(ls /mnt/dir | wc -l)
umount /mnt
section fsck
status=0; fsck.ext4 -f -n /dev/sda || status=$?
echo FSCK-STATUS=$status",
    );
    run.assert_status(0);
    for n in 1..=6 {
        run.assert_section_contains("checksums", &format!("file{n}: OK"));
    }
    run.assert_line("FILES-6");
    run.assert_line("FSCK-STATUS=0");
}

/// Total interrupts of each `virtio0-request` vector in a copy of /proc/interrupts.
fn request_vector_counts(interrupts: &[&str]) -> Vec<u64> {
    interrupts
        .iter()
        .filter(|line| line.contains("virtio0-request"))
        .map(|line| interrupt_total(line))
        .collect()
}

#[test]
fn guest_scsi_fio_verify_on_two_queues() {
    let disk = sparse_disk("guest-fio", 64 << 20).unwrap();
    let run = boot(
        &format!("--disk path={}", path_of(&disk)),
        &["--smp", "2", "--queues", "2"],
        "section irq-before; grep virtio0-request /proc/interrupts
section fio
status=0
fio --name=queues --filename=/dev/sda --ioengine=libaio --direct=1 --rw=randwrite --bs=4k \
    --iodepth=16 --numjobs=2 --size=8M --offset_increment=8M \
    --cpus_allowed=0-1 --cpus_allowed_policy=split \
    --verify=crc32c --verify_fatal=1 --group_reporting --eta=never || status=$?
echo FIO-STATUS=$status
section irq-after; grep virtio0-request /proc/interrupts
section end",
    );
    run.assert_status(0);
    run.assert_line("FIO-STATUS=0");
    run.assert_section_contains("fio", "err= 0");
    // Every block of both 8 MiB regions was written once and read back for verification.
    run.assert_section_contains("fio", "issued rwts: total=4096,4096,0,0");
    let fio = run.section("fio");
    let corruption: Vec<&&str> = fio
        .iter()
        .filter(|line| line.contains("verify:") || line.contains("verify failed"))
        .collect();
    assert!(
        corruption.is_empty(),
        "fio found corruption: {corruption:?}"
    );

    let before = request_vector_counts(&run.section("irq-before"));
    let after = request_vector_counts(&run.section("irq-after"));
    assert_eq!(
        after.len(),
        2,
        "expected two virtio0-request MSI-X vectors, /proc/interrupts had:\n{}",
        run.section("irq-after").join("\n")
    );
    assert_eq!(before.len(), 2, "virtio0-request vectors before fio");
    for (queue, (before, after)) in before.iter().zip(&after).enumerate() {
        assert!(
            after > before,
            "request queue {queue}'s vector took no interrupt during fio ({before} -> {after})"
        );
    }
}

#[test]
fn guest_scsi_blkdiscard_punches_holes_and_zeroes() {
    const MIB: u64 = 1 << 20;
    const FILL: u8 = 0xab;
    // What the backing file holds afterwards, by MiB: the host fills 16 MiB, the guest
    // discards [4, 12) and zeroes [13, 14) (WRITE SAME); all reads as zeros to the guest.
    const REGIONS: [(u64, u64, u8); 5] = [
        (0, 4, FILL),
        (4, 12, 0),
        (12, 13, FILL),
        (13, 14, 0),
        (14, 16, FILL),
    ];
    const FILLED: u64 = 16 * MIB;
    const HOLE_BYTES: u64 = 8 * MIB;
    let disk = sparse_disk("guest-discard", 32 * MIB).unwrap();
    write_at(disk.path(), 0, &vec![FILL; FILLED as usize]);
    disk.as_file().sync_all().unwrap();
    let allocated_before = disk.as_file().metadata().unwrap().blocks() * 512;
    assert!(
        allocated_before >= FILLED,
        "the host's fill is not allocated"
    );

    // util-linux's blkdiscard by its path: busybox sh would run its own applet, which has no -z.
    let run = boot(
        &format!("--disk path={},discard=unmap", path_of(&disk)),
        &[],
        "/usr/sbin/blkdiscard -o 4MiB -l 8MiB /dev/sda
/usr/sbin/blkdiscard -z -o 13MiB -l 1MiB /dev/sda
echo DISCARDED-AND-ZEROED
echo NONZERO-BYTES-READ=$(dd if=/dev/sda bs=1M skip=4 count=8 iflag=direct 2>/dev/null | tr -d '\\000' | wc -c)+\
$(dd if=/dev/sda bs=1M skip=13 count=1 iflag=direct 2>/dev/null | tr -d '\\000' | wc -c)",
    );
    run.assert_status(0);
    run.assert_line("DISCARDED-AND-ZEROED");
    run.assert_line("NONZERO-BYTES-READ=0+0");

    let allocated_after = File::open(disk.path())
        .unwrap()
        .metadata()
        .unwrap()
        .blocks()
        * 512;
    assert!(
        allocated_after + HOLE_BYTES <= allocated_before,
        "blkdiscard of {HOLE_BYTES} bytes did not punch a hole: {allocated_before} bytes \
         allocated before, {allocated_after} after"
    );
    for (start, end, byte) in REGIONS {
        let what = format!("bytes {byte:#x} (MiB {start} to {end})");
        let expected = vec![byte; ((end - start) * MIB) as usize];
        assert_file_holds(disk.path(), start * MIB, &expected, &what);
    }
}

#[test]
fn guest_scsi_two_luns_write_their_own_files() {
    let disk0 = sparse_disk("guest-lun0", 32 << 20).unwrap();
    let disk1 = sparse_disk("guest-lun1", 16 << 20).unwrap();
    let (block0, block1) = (100, 200);
    let script = [
        "lun0=$(lun_disk 0)
lun1=$(lun_disk 1)
echo LUN0-SECTORS=$(cat /sys/block/${lun0#/dev/}/size)
echo LUN1-SECTORS=$(cat /sys/block/${lun1#/dev/}/size)
"
        .to_string(),
        write_pattern("lun0", "$lun0", block0),
        write_pattern("lun1", "$lun1", block1),
        check_pattern("lun0", "$lun0", block0),
        check_pattern("lun1", "$lun1", block1),
    ]
    .concat();
    let run = boot(
        &format!(
            "--disk path={},lun=0 --disk path={},lun=1",
            path_of(&disk0),
            path_of(&disk1)
        ),
        &[],
        &script,
    );
    run.assert_status(0);
    run.assert_line("LUN0-SECTORS=65536");
    run.assert_line("LUN1-SECTORS=32768");
    run.assert_line("PATTERN-lun0-MATCHES");
    run.assert_line("PATTERN-lun1-MATCHES");

    assert_file_holds_pattern(disk0.path(), "lun0", block0);
    assert_file_holds_pattern(disk1.path(), "lun1", block1);
    let pattern_len = pattern("lun0", PATTERN_LINES).len();
    let zeros = vec![0; pattern_len];
    assert_file_holds(
        disk0.path(),
        block1 * BLOCK_4K,
        &zeros,
        "zeros (LUN 1's write)",
    );
    assert_file_holds(
        disk1.path(),
        block0 * BLOCK_4K,
        &zeros,
        "zeros (LUN 0's write)",
    );
}

#[test]
fn guest_scsi_read_only_lun_rejects_writes() {
    let disk = sparse_disk("guest-readonly", 16 << 20).unwrap();
    write_at(disk.path(), 0, &pattern("keep", PATTERN_LINES));
    let before = std::fs::read(disk.path()).unwrap();
    let script = [
        "section dd
if dd if=/dev/zero of=/dev/sda bs=4096 count=1 oflag=direct; then echo DD-WROTE; exit 1; fi
echo DD-REFUSED
section modes; sg_modes /dev/sda
dd if=/dev/zero of=/tmp/zero bs=4096 count=1 2>/dev/null
section sg-write
if sg_raw -s 4096 -i /tmp/zero /dev/sg0 2a 00 00 00 00 00 00 00 08 00; then echo SG-WRITE-ACCEPTED; exit 1; fi
echo SG-WRITE-REFUSED
section read
"
        .to_string(),
        check_pattern("keep", "/dev/sda", 0),
    ]
    .concat();
    let run = boot(
        &format!("--disk path={},readonly=on", path_of(&disk)),
        &[],
        &script,
    );
    run.assert_status(0);
    run.assert_line("DD-REFUSED");
    run.assert_section_contains("modes", "WP=1");
    // WRITE(10) straight to the device, past the kernel's own read-only check.
    run.assert_line("SG-WRITE-REFUSED");
    run.assert_section_contains("sg-write", "Sense key: Data Protect");
    run.assert_section_contains("sg-write", "Write protected");
    run.assert_line("PATTERN-keep-MATCHES");
    assert!(
        std::fs::read(disk.path()).unwrap() == before,
        "the read-only LUN's backing file changed"
    );
}

#[test]
fn guest_scsi_synced_data_survives_a_server_restart() {
    let disk = sparse_disk("guest-restart", 32 << 20).unwrap();
    let block = 300;
    let first = boot(
        &format!("--disk path={}", path_of(&disk)),
        &[],
        &format!(
            "{} > /tmp/keep
dd if=/tmp/keep of=/dev/sda bs=4096 seek={block} conv=notrunc,fsync 2>/dev/null
sync
echo WRITTEN-AND-SYNCED",
            pattern_command("keep", PATTERN_LINES)
        ),
    );
    first.assert_status(0);
    first.assert_line("WRITTEN-AND-SYNCED");
    assert_file_holds_pattern(disk.path(), "keep", block);

    // A fresh server process, which reads with O_DIRECT this time.
    let second = boot(
        &format!("--disk path={},cache=none", path_of(&disk)),
        &[],
        &check_pattern("keep", "/dev/sda", block),
    );
    second.assert_status(0);
    second.assert_line("PATTERN-keep-MATCHES");
}

#[test]
fn guest_scsi_main_job_run_sh_works() {
    let run = run_script("run.sh", &[]).unwrap();
    run.assert_status(0);
    run.assert_line_contains("Vendor identification: VFIOUSER");
    run.assert_line("run.sh: the disk works");
}
