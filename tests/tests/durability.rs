//! What was acknowledged survives: writes acknowledged with FUA, or followed by an acknowledged
//! SYNCHRONIZE CACHE, are in the backing file after the server is SIGKILLed mid-write, and after
//! the client disappears mid-write (as when QEMU is killed) a new client reads them back; for
//! cache=none and cache=writeback.
//!
//! Build the server first: `cargo build -p server && cargo test -p tests --test durability`.

use std::os::unix::fs::FileExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tests::driver::FIRST_REQUEST_QUEUE;
use tests::scsi::{self, cdb};
use tests::server_process::sparse_image;
use tests::{DriverOptions, ScsiRequest, ServerProcess, VirtioScsiDriver};

const BLOCK: usize = 4096;
const BLOCKS: u64 = 512;
const BLOCKS_PER_FLUSH: u64 = 8;
/// Blocks that must be known durable when the check runs, for it to prove anything.
const KILL_AFTER_DURABLE: usize = 16;

/// A block's content: its number and the round that wrote it, repeated.
fn pattern(block: u64, round: u64) -> Vec<u8> {
    let word = (block << 32 | round).to_le_bytes();
    word.iter().copied().cycle().take(BLOCK).collect()
}

fn start(image: &Path, cache: &str) -> ServerProcess {
    let disk = format!("path={},cache={cache}", image.display());
    ServerProcess::start(&["--disk", &disk, "--num-queues", "2"]).unwrap_or_else(|e| panic!("{e}"))
}

fn connect(server: &ServerProcess) -> VirtioScsiDriver {
    let options = DriverOptions {
        timeout: Duration::from_secs(10),
        ..DriverOptions::default()
    };
    let mut driver = VirtioScsiDriver::connect(server.socket(), options)
        .unwrap_or_else(|e| panic!("driver: {e}\n{}", server.stderr()));
    let ready = (0..4).any(|_| driver.test_unit_ready(0).unwrap().is_good());
    assert!(ready, "LUN 0 never became ready");
    driver
}

fn write_request(block: u64, round: u64, fua: bool) -> ScsiRequest {
    let flags = if fua { cdb::FUA } else { 0 };
    let lba = block * (BLOCK as u64 / 512);
    ScsiRequest::new(
        scsi::encode_lun(0, 0).unwrap(),
        &cdb::lba16(cdb::WRITE_16, flags, lba, (BLOCK / 512) as u32),
    )
    .data_out(&pattern(block, round))
}

fn assert_in_file(image: &Path, durable: &[(u64, u64)], what: &str) {
    let file = std::fs::File::open(image).unwrap();
    let mut data = vec![0u8; BLOCK];
    for &(block, round) in durable {
        file.read_exact_at(&mut data, block * BLOCK as u64).unwrap();
        assert!(
            data == pattern(block, round),
            "{what}: block {block} of round {round} acknowledged durable but not in the file"
        );
    }
}

/// Writes blocks (odd ones with FUA, the rest made durable by a flush every few blocks) until
/// the server dies under them; returns the (block, round) pairs acknowledged durable.
fn write_until_killed(
    driver: &mut VirtioScsiDriver,
    server: &mut ServerProcess,
) -> Vec<(u64, u64)> {
    let pid = server.pid() as i32;
    // The kill waits for enough durable writes rather than a fixed time: on a loaded machine
    // a fixed window let too few through for the check to mean anything.
    let acknowledged = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&acknowledged);
    let killer = std::thread::spawn(move || {
        let started = Instant::now();
        while seen.load(Ordering::Relaxed) < 2 * KILL_AFTER_DURABLE
            && started.elapsed() < Duration::from_secs(30)
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(50));
        // SAFETY: kill only sends a signal to the server process this test started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    });
    let mut durable = Vec::new();
    let mut unflushed = Vec::new();
    'writing: for round in 1.. {
        for block in 0..BLOCKS {
            let fua = block % 2 == 1;
            match driver.command(0, &write_request(block, round, fua)) {
                Ok(result) if result.is_good() => {
                    if fua {
                        durable.push((block, round));
                    } else {
                        unflushed.push((block, round));
                    }
                }
                // In flight when the server died: its block may hold either content.
                _ => {
                    unflushed.push((block, round));
                    break 'writing;
                }
            }
            if block % BLOCKS_PER_FLUSH == BLOCKS_PER_FLUSH - 1 {
                match driver.sync_cache(0) {
                    Ok(result) if result.is_good() => durable.append(&mut unflushed),
                    _ => break 'writing,
                }
            }
            acknowledged.store(durable.len(), Ordering::Relaxed);
        }
    }
    killer.join().unwrap();
    let status = server.wait_exit(Duration::from_secs(10)).unwrap();
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "the server was killed"
    );
    // Only the latest durable round of each block counts: a later unacknowledged write may
    // have replaced an earlier one, which is allowed.
    latest_per_block(durable, &unflushed)
}

/// The last durable round of each block, unless a later write to it was in doubt.
fn latest_per_block(durable: Vec<(u64, u64)>, in_doubt: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut latest = std::collections::BTreeMap::new();
    for (block, round) in durable {
        latest.insert(block, round);
    }
    for (block, round) in in_doubt {
        if latest.get(block).is_some_and(|durable| durable < round) {
            latest.remove(block);
        }
    }
    latest.into_iter().collect()
}

fn server_killed_mid_write(cache: &str) {
    let (_dir, image) = sparse_image(BLOCKS * BLOCK as u64).unwrap();
    let mut server = start(&image, cache);
    let mut driver = connect(&server);
    let durable = write_until_killed(&mut driver, &mut server);
    assert!(
        durable.len() >= KILL_AFTER_DURABLE,
        "too few writes before the kill: {}",
        durable.len()
    );
    assert_in_file(
        &image,
        &durable,
        &format!("server SIGKILLed, cache={cache}"),
    );
}

#[test]
fn acknowledged_writes_survive_the_server_sigkilled_cache_none() {
    server_killed_mid_write("none");
}

#[test]
fn acknowledged_writes_survive_the_server_sigkilled_writeback() {
    server_killed_mid_write("writeback");
}

/// The client vanishes with writes in flight on both queues; the server completes them, serves
/// the next client, which reads back every write acknowledged before.
fn client_gone_mid_write(cache: &str) {
    let (_dir, image) = sparse_image(BLOCKS * BLOCK as u64).unwrap();
    let server = start(&image, cache);
    let mut driver = connect(&server);
    let mut acknowledged = Vec::new();
    for block in 0..64 {
        let fua = block % 2 == 1;
        assert!(driver
            .command(0, &write_request(block, 1, fua))
            .unwrap()
            .is_good());
        acknowledged.push((block, 1));
    }
    assert!(driver.sync_cache(0).unwrap().is_good());
    for block in 64..128 {
        let queue = FIRST_REQUEST_QUEUE + (block % 2) as u16;
        driver
            .submit(queue, &write_request(block, 1, false))
            .unwrap();
    }
    drop(driver);

    let mut driver = connect(&server);
    for &(block, round) in &acknowledged {
        let lba = (block * (BLOCK as u64 / 512)) as u32;
        let read = driver.read10(0, lba, (BLOCK / 512) as u16, 512).unwrap();
        assert!(read.is_good());
        assert!(
            read.data_in == pattern(block, round),
            "cache={cache}: block {block} lost after the client vanished"
        );
    }
    drop(driver);
    assert_in_file(
        &image,
        &acknowledged,
        &format!("client gone, cache={cache}"),
    );
}

#[test]
fn acknowledged_writes_survive_the_client_vanishing_cache_none() {
    client_gone_mid_write("none");
}

#[test]
fn acknowledged_writes_survive_the_client_vanishing_writeback() {
    client_gone_mid_write("writeback");
}
