//! Every CDB the disk emulation supports, driven through the userspace driver against the real
//! `vfio-user-scsi` binary (build it first: `cargo build -p server`).

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::Duration;

use tests::scsi::{self, cdb};
use tests::{DriverOptions, ScsiResult, ServerProcess, VirtioScsiDriver};

const BLOCK: u32 = 512;
const ILLEGAL_REQUEST: u8 = 0x05;
const UNIT_ATTENTION: u8 = 0x06;
const DATA_PROTECT: u8 = 0x07;

struct Setup {
    server: ServerProcess,
    driver: VirtioScsiDriver,
    dir: tempfile::TempDir,
    files: Vec<PathBuf>,
}

/// A server with one file-backed LUN per entry of `luns` (size, extra --disk options).
fn setup(luns: &[(u64, &str)]) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let mut args = Vec::new();
    let mut files = Vec::new();
    for (i, (size, extra)) in luns.iter().enumerate() {
        let path = dir.path().join(format!("lun{i}.img"));
        std::fs::File::create(&path)
            .unwrap()
            .set_len(*size)
            .unwrap();
        args.push("--disk".to_string());
        args.push(format!("path={},lun={i}{extra}", path.display()));
        files.push(path);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = ServerProcess::start(&args).unwrap_or_else(|e| panic!("{e}"));
    let options = DriverOptions {
        timeout: Duration::from_secs(5),
        ..DriverOptions::default()
    };
    let mut driver = VirtioScsiDriver::connect(server.socket(), options)
        .unwrap_or_else(|e| panic!("{e}\nserver stderr:\n{}", server.stderr()));
    for lun in 0..luns.len() as u16 {
        clear_unit_attention(&mut driver, lun);
    }
    Setup {
        server,
        driver,
        dir,
        files,
    }
}

fn clear_unit_attention(driver: &mut VirtioScsiDriver, lun: u16) {
    for _ in 0..4 {
        if driver.test_unit_ready(lun).unwrap().is_good() {
            return;
        }
    }
    panic!("LUN {lun} keeps failing TEST UNIT READY");
}

fn good(r: ScsiResult, what: &str, server: &ServerProcess) -> ScsiResult {
    assert!(
        r.is_good(),
        "{what}: {r:?}\nserver stderr:\n{}",
        server.stderr()
    );
    r
}

fn pattern(blocks: u32, seed: u8) -> Vec<u8> {
    (0..blocks * BLOCK)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn the_first_command_after_connect_reports_power_on_reset() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.img");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let disk = format!("path={}", path.display());
    let server = ServerProcess::start(&["--disk", &disk]).unwrap();
    let mut driver = VirtioScsiDriver::connect(server.socket(), DriverOptions::default()).unwrap();
    let first = driver.test_unit_ready(0).unwrap();
    assert_eq!(first.status, scsi::SAM_STAT_CHECK_CONDITION, "{first:?}");
    let (key, asc, _) = first.sense_key().unwrap();
    assert_eq!((key, asc), (UNIT_ATTENTION, 0x29));
    assert!(driver.test_unit_ready(0).unwrap().is_good());
    // A LUN reset raises it again.
    let r = driver
        .tmf(0, scsi::VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET, 0)
        .unwrap();
    assert!(r == scsi::VIRTIO_SCSI_S_OK || r == scsi::VIRTIO_SCSI_S_FUNCTION_SUCCEEDED);
    let after = driver.test_unit_ready(0).unwrap();
    assert_eq!(
        after.sense_key().map(|s| (s.0, s.1)),
        Some((UNIT_ATTENTION, 0x29))
    );
}

#[test]
fn reads_and_writes_of_every_size_and_fua() {
    let Setup {
        server,
        mut driver,
        files,
        dir: _dir,
    } = setup(&[(4 << 20, "")]);
    let s = &server;
    let cases: [(u8, u8, Vec<u8>); 4] = [
        (cdb::WRITE_6, cdb::READ_6, cdb::rw6(cdb::WRITE_6, 10, 2)),
        (
            cdb::WRITE_10,
            cdb::READ_10,
            cdb::lba10(cdb::WRITE_10, cdb::FUA, 20, 2),
        ),
        (
            cdb::WRITE_12,
            cdb::READ_12,
            cdb::lba12(cdb::WRITE_12, cdb::FUA, 30, 2),
        ),
        (
            cdb::WRITE_16,
            cdb::READ_16,
            cdb::lba16(cdb::WRITE_16, cdb::FUA, 40, 2),
        ),
    ];
    for (i, (write, read, write_cdb)) in cases.into_iter().enumerate() {
        let data = pattern(2, i as u8);
        good(
            driver
                .scsi_command(0, 0, &write_cdb, Some(&data), 0)
                .unwrap(),
            "write",
            s,
        );
        let lba = 10 * (i as u32 + 1);
        let read_cdb = match read {
            cdb::READ_6 => cdb::rw6(read, lba, 2),
            cdb::READ_10 => cdb::lba10(read, 0, lba, 2),
            cdb::READ_12 => cdb::lba12(read, 0, lba, 2),
            _ => cdb::lba16(read, 0, u64::from(lba), 2),
        };
        let r = good(
            driver
                .scsi_command(0, 0, &read_cdb, None, 2 * BLOCK)
                .unwrap(),
            "read",
            s,
        );
        assert_eq!(r.data_in, data, "opcode {write:#x}");
        let file = std::fs::read(&files[0]).unwrap();
        let at = (lba * BLOCK) as usize;
        assert_eq!(&file[at..at + data.len()], &data[..]);
    }
    for sync in [
        cdb::lba10(cdb::SYNCHRONIZE_CACHE_10, 0, 0, 0),
        cdb::lba16(cdb::SYNCHRONIZE_CACHE_16, 0, 0, 0),
        cdb::lba10(cdb::VERIFY_10, 0, 0, 8),
        cdb::lba16(cdb::VERIFY_16, 0, 0, 8),
    ] {
        good(
            driver.scsi_command(0, 0, &sync, None, 0).unwrap(),
            "sync/verify",
            s,
        );
    }
    // A data-in buffer larger than the transfer leaves a residual.
    let r = good(
        driver
            .scsi_command(0, 0, &cdb::lba10(cdb::READ_10, 0, 0, 1), None, 4 * BLOCK)
            .unwrap(),
        "short read",
        s,
    );
    assert_eq!(r.resid, 3 * BLOCK);
    // Past the end: LBA OUT OF RANGE.
    let blocks = (4u64 << 20) / u64::from(BLOCK);
    let r = driver.read16(0, blocks - 1, 2, BLOCK).unwrap();
    assert_eq!(r.sense_key(), Some((ILLEGAL_REQUEST, 0x21, 0x00)));
}

#[test]
fn unmap_and_write_same_punch_and_fill() {
    let Setup {
        server,
        mut driver,
        files,
        dir: _dir,
    } = setup(&[(8 << 20, ",discard=unmap")]);
    let s = &server;
    let data = pattern(2048, 7);
    good(
        driver.write16(0, 0, &data, BLOCK, false).unwrap(),
        "fill 1 MiB",
        s,
    );
    good(driver.sync_cache(0).unwrap(), "sync", s);
    let before = std::fs::metadata(&files[0]).unwrap().blocks();
    good(driver.unmap(0, &[(0, 2048)]).unwrap(), "unmap", s);
    let after = std::fs::metadata(&files[0]).unwrap().blocks();
    assert!(
        after < before,
        "UNMAP punched no hole: {before} -> {after} blocks"
    );
    let r = good(driver.read16(0, 0, 8, BLOCK).unwrap(), "read unmapped", s);
    assert!(r.data_in.iter().all(|&b| b == 0));

    let block = pattern(1, 99);
    good(
        driver.write_same16(0, 4096, 16, &block, false).unwrap(),
        "write same",
        s,
    );
    let r = good(driver.read16(0, 4096, 16, BLOCK).unwrap(), "read back", s);
    for chunk in r.data_in.chunks(BLOCK as usize) {
        assert_eq!(chunk, &block[..]);
    }
    good(
        driver.write_same16(0, 4096, 16, &[0u8; 512], true).unwrap(),
        "write same unmap",
        s,
    );
    let r = good(driver.read16(0, 4096, 16, BLOCK).unwrap(), "read zeroes", s);
    assert!(r.data_in.iter().all(|&b| b == 0));
    let ws10 = cdb::lba10(cdb::WRITE_SAME_10, 0, 8192, 4);
    good(
        driver.scsi_command(0, 0, &ws10, Some(&block), 0).unwrap(),
        "write same 10",
        s,
    );
}

#[test]
fn inquiry_mode_pages_and_housekeeping_commands() {
    let Setup {
        server,
        mut driver,
        dir: _dir,
        ..
    } = setup(&[(4 << 20, ",serial=SER123,discard=unmap")]);
    let s = &server;
    let std_inq = good(driver.inquiry(0, false, 0, 96).unwrap(), "inquiry", s);
    assert_eq!(std_inq.data_in[0], 0x00);
    let serial = good(driver.inquiry(0, true, 0x80, 255).unwrap(), "vpd 80", s);
    let len = usize::from(serial.data_in[3]);
    assert_eq!(
        std::str::from_utf8(&serial.data_in[4..4 + len])
            .unwrap()
            .trim(),
        "SER123"
    );
    let limits = good(driver.inquiry(0, true, 0xb0, 255).unwrap(), "vpd b0", s);
    assert!(limits.data_in.len() >= 0x40);
    let lbp = good(driver.inquiry(0, true, 0xb2, 255).unwrap(), "vpd b2", s);
    assert_ne!(lbp.data_in[5] & 0x80, 0, "LBPU set with discard");
    let bad_page = driver.inquiry(0, true, 0x42, 255).unwrap();
    assert_eq!(bad_page.sense_key(), Some((ILLEGAL_REQUEST, 0x24, 0x00)));

    for page in [0x08u8, 0x0a, 0x3f] {
        let r6 = good(
            driver.mode_sense6(0, page, 0, 255).unwrap(),
            "mode sense 6",
            s,
        );
        assert_eq!(usize::from(r6.data_in[0]) + 1, r6.data_in.len());
        let r10 = good(
            driver.mode_sense10(0, page, 0, 1024).unwrap(),
            "mode sense 10",
            s,
        );
        let len10 = usize::from(u16::from_be_bytes([r10.data_in[0], r10.data_in[1]]));
        assert_eq!(len10 + 2, r10.data_in.len());
    }
    // Turn the write cache off with MODE SELECT 6, then back on with MODE SELECT 10.
    for (wce, ten) in [(false, false), (true, true)] {
        let mut caching = vec![0u8; 20];
        caching[0] = 0x08;
        caching[1] = 0x12;
        caching[2] = if wce { 0x04 } else { 0 };
        let (cdb, param) = if ten {
            let mut p = vec![0u8; 8];
            p.extend_from_slice(&caching);
            (cdb::mode_select10(p.len() as u16), p)
        } else {
            let mut p = vec![0u8; 4];
            p.extend_from_slice(&caching);
            (cdb::mode_select6(p.len() as u8), p)
        };
        good(
            driver.scsi_command(0, 0, &cdb, Some(&param), 0).unwrap(),
            "mode select",
            s,
        );
        let r = good(
            driver.mode_sense6(0, 0x08, 0, 255).unwrap(),
            "mode sense caching",
            s,
        );
        let page = &r.data_in[4 + usize::from(r.data_in[3])..];
        assert_eq!(page[0] & 0x3f, 0x08);
        assert_eq!(page[2] & 0x04 != 0, wce);
    }

    let sense = good(driver.request_sense(0).unwrap(), "request sense", s);
    assert_eq!(sense.data_in[0] & 0x7f, 0x70);
    assert_eq!(sense.data_in[2] & 0x0f, 0);
    good(
        driver
            .scsi_command(0, 0, &cdb::start_stop_unit(true, false), None, 0)
            .unwrap(),
        "start",
        s,
    );
    good(
        driver
            .scsi_command(0, 0, &cdb::prevent_allow(false), None, 0)
            .unwrap(),
        "allow",
        s,
    );
    let all = good(
        driver
            .scsi_command(
                0,
                0,
                &cdb::report_supported_opcodes(0, 0, 0, 4096),
                None,
                4096,
            )
            .unwrap(),
        "rsoc",
        s,
    );
    assert!(u32::from_be_bytes(all.data_in[0..4].try_into().unwrap()) >= 8);
    let one = good(
        driver
            .scsi_command(
                0,
                0,
                &cdb::report_supported_opcodes(1, cdb::READ_10, 0, 64),
                None,
                64,
            )
            .unwrap(),
        "rsoc one",
        s,
    );
    assert_eq!(
        one.data_in[1] & 0x07,
        0x03,
        "READ 10 supported as the standard says"
    );
    let tmfs = good(
        driver
            .scsi_command(0, 0, &cdb::report_supported_tmfs(16), None, 16)
            .unwrap(),
        "rstmf",
        s,
    );
    assert_ne!(tmfs.data_in[0], 0);
    let rc10 = good(driver.read_capacity10(0).unwrap(), "read capacity 10", s);
    assert_eq!(
        u32::from_be_bytes(rc10.data_in[4..8].try_into().unwrap()),
        BLOCK
    );
    let bad = driver
        .scsi_command(0, 0, &[cdb::INQUIRY, 0, 0x80, 0, 255, 0], None, 255)
        .unwrap();
    assert_eq!(
        bad.sense_key(),
        Some((ILLEGAL_REQUEST, 0x24, 0x00)),
        "page without EVPD"
    );
}

#[test]
fn two_luns_and_a_read_only_one() {
    let Setup {
        server,
        mut driver,
        dir: _dir,
        ..
    } = setup(&[(2 << 20, ""), (1 << 20, ",readonly=on")]);
    let s = &server;
    let luns = good(driver.report_luns(0, 256).unwrap(), "report luns", s);
    assert_eq!(
        u32::from_be_bytes(luns.data_in[0..4].try_into().unwrap()),
        16
    );
    assert_eq!(driver.capacity(0).unwrap(), Some(((2 << 20) / 512, BLOCK)));
    assert_eq!(driver.capacity(1).unwrap(), Some(((1 << 20) / 512, BLOCK)));
    let denied = driver.write10(1, 0, &pattern(1, 3), BLOCK).unwrap();
    assert_eq!(denied.sense_key(), Some((DATA_PROTECT, 0x27, 0x00)));
    let r = good(
        driver.mode_sense6(1, 0x3f, 0, 255).unwrap(),
        "mode sense ro",
        s,
    );
    assert_ne!(r.data_in[2] & 0x80, 0, "WP bit");
    good(
        driver.write10(0, 0, &pattern(1, 3), BLOCK).unwrap(),
        "write lun 0",
        s,
    );
}
