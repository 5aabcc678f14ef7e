//! Firmware boot from our disk, with no `-kernel`: SeaBIOS (QEMU's default) runs a two-stage
//! MBR program assembled from `tests/firmware/mbr.asm`, whose first stage reads the second
//! through INT 13h; OVMF finds an EFI system partition on the disk and runs systemd-boot, which
//! boots the guest kernel's EFI stub and the initramfs, whose script then reads the disk from
//! Linux. Each with one request queue served by the main loop and with two on an iothread.
//!
//! SeaBIOS uses the first request queue before QEMU unmaps and remaps the firmware areas holding
//! its rings, and again afterwards without a reset: the server must neither break the queue nor
//! warn about it.

use std::path::Path;
use std::process::Command;

use tests::guest::{repo_root, run_vm, sparse_disk, GuestRun};

/// Sectors of the second stage: several INT 13h reads of 8 sectors each.
const STAGE2_SECTORS: u32 = 64;

/// Assembles the MBR program with nasm into a fresh 64 MiB disk image.
fn mbr_disk() -> tempfile::NamedTempFile {
    let source = repo_root().join("tests/firmware/mbr.asm");
    let dir = tempfile::tempdir().unwrap();
    let program = dir.path().join("mbr.bin");
    let status = Command::new("nasm")
        .arg("-f")
        .arg("bin")
        .arg(format!("-DSTAGE2_SECTORS={STAGE2_SECTORS}"))
        .arg("-o")
        .arg(&program)
        .arg(&source)
        .status()
        .unwrap_or_else(|e| {
            panic!("cannot run nasm (Debian package nasm, installed by scripts/test.sh): {e}")
        });
    assert!(status.success(), "nasm failed on {}", source.display());
    let bytes = std::fs::read(&program).unwrap();
    assert_eq!(bytes.len(), 512 * (1 + STAGE2_SECTORS as usize));
    assert_eq!(&bytes[510..512], &[0x55, 0xaa]);
    let disk = sparse_disk("mbr", 64 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(disk.as_file(), &bytes, 0).unwrap();
    disk
}

/// The server's log, written to `log` with --log-file: nothing an operator would have to look
/// at, and no queue given up.
fn assert_quiet_log(log: &Path, run: &GuestRun) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let warnings: Vec<&str> = text
        .lines()
        .filter(|line| line.contains(" WARN ") || line.contains("ERRO"))
        .collect();
    assert!(
        warnings.is_empty(),
        "the server warned during a normal boot:\n{}\nlast lines of the run:\n{}",
        warnings.join("\n"),
        run.tail()
    );
}

fn server_args(extra: &str, log: &Path) -> String {
    format!("{extra} --log-format term --log-file {}", log.display())
}

fn seabios_boot(extra: &str) {
    let disk = mbr_disk();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let disk_path = disk.path().to_str().unwrap();
    let args = server_args(extra, &log);
    let run = run_vm(
        &[
            "--server",
            &args,
            "--firmware",
            "seabios",
            "--disk",
            disk_path,
            "--timeout",
            "60",
        ],
        "",
    )
    .unwrap();
    run.assert_status(0);
    run.assert_line_contains("VUS-BOOT: stage 1 reading stage 2");
    run.assert_line_contains("VUS-BOOT-MARKER: every sector of stage 2 arrived");
    assert_quiet_log(&log, &run);
}

/// Linux, booted by systemd-boot from the ESP, reads the partition's FAT label back.
const OVMF_SCRIPT: &str = "set -e
grep -q sda1 /proc/partitions
dd if=/dev/sda1 bs=512 count=1 2>/dev/null | grep -q VUS-ESP
echo VUS-OVMF-BOOTED-FROM-ESP";

fn ovmf_boot(extra: &str) {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let args = server_args(extra, &log);
    let run = run_vm(
        &["--server", &args, "--firmware", "ovmf", "--timeout", "300"],
        OVMF_SCRIPT,
    )
    .unwrap();
    run.assert_status(0);
    // OVMF's boot manager names the boot option after our disk's INQUIRY data.
    run.assert_line_contains("BdsDxe: starting Boot");
    run.assert_line_contains("VFIOUSER");
    run.assert_line("VUS-OVMF-BOOTED-FROM-ESP");
    assert_quiet_log(&log, &run);
}

#[test]
fn guest_seabios_boots_mbr_program_one_queue() {
    seabios_boot("--num-queues 1");
}

#[test]
fn guest_seabios_boots_mbr_program_two_queues_on_an_iothread() {
    seabios_boot("--num-queues 2 --iothread io0");
}

#[test]
fn guest_ovmf_boots_linux_from_esp_one_queue() {
    ovmf_boot("--num-queues 1");
}

#[test]
fn guest_ovmf_boots_linux_from_esp_two_queues_on_an_iothread() {
    ovmf_boot("--num-queues 2 --iothread io0");
}
