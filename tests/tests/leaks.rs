//! One server outlives many clients: 50 connect/disconnect cycles, each a full initialisation
//! with I/O on every request queue (two iothreads, a file disk and a null disk), leave the
//! server's RSS, open fds and threads where they were after the first few.
//!
//! Build the server first: `cargo build -p server && cargo test -p tests --test leaks`.

use std::time::{Duration, Instant};

use tests::server_process::sparse_image;
use tests::{DriverOptions, ServerProcess, VirtioScsiDriver};

const BLOCK: u32 = 512;
const CYCLES: usize = 50;
const WARM_UP: usize = 5;
/// RSS may move by allocator noise, not by a leak of a mapping or a queue per client.
const RSS_SLACK_KIB: u64 = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Usage {
    rss_kib: u64,
    fds: usize,
    threads: usize,
}

fn usage(pid: u32) -> Usage {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss_kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    let count = |dir: &str| {
        std::fs::read_dir(format!("/proc/{pid}/{dir}"))
            .unwrap()
            .count()
    };
    Usage {
        rss_kib,
        fds: count("fd"),
        threads: count("task"),
    }
}

/// The usage once the server has released the last client: fds and threads stop changing.
fn settled_usage(pid: u32) -> Usage {
    let started = Instant::now();
    let mut last = usage(pid);
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let now = usage(pid);
        if (now.fds, now.threads) == (last.fds, last.threads) || started.elapsed().as_secs() > 5 {
            return now;
        }
        last = now;
    }
}

#[test]
fn fifty_clients_leave_rss_fds_and_threads_flat() {
    let (_dir, image) = sparse_image(8 << 20).unwrap();
    let file_disk = format!("path={},cache=none", image.display());
    let server = ServerProcess::start(&[
        "--disk",
        &file_disk,
        "--disk",
        "null,size=8M",
        "--num-queues",
        "2",
        "--iothread",
        "io0",
        "--iothread",
        "io1",
    ])
    .unwrap_or_else(|e| panic!("{e}"));
    let options = DriverOptions {
        timeout: Duration::from_secs(10),
        ..DriverOptions::default()
    };
    let data = vec![0x6bu8; 8192];
    let mut baseline = None;
    for cycle in 0..CYCLES {
        let mut driver = VirtioScsiDriver::connect(server.socket(), options.clone())
            .unwrap_or_else(|e| panic!("cycle {cycle}: {e}\n{}", server.stderr()));
        for lun in [0, 1] {
            let ready = (0..4).any(|_| driver.test_unit_ready(lun).unwrap().is_good());
            assert!(ready, "cycle {cycle}: LUN {lun} never became ready");
        }
        for queue in 0..driver.num_request_queues() {
            let lun = queue % 2;
            let write = driver
                .scsi_command(
                    queue,
                    lun,
                    &tests::scsi::cdb::lba10(tests::scsi::cdb::WRITE_10, 0, 0, 16),
                    Some(&data),
                    0,
                )
                .unwrap();
            assert!(write.is_good(), "cycle {cycle}: write on queue {queue}");
        }
        assert!(driver.read10(0, 0, 16, BLOCK).unwrap().data_in == data);
        drop(driver);
        if cycle + 1 == WARM_UP {
            baseline = Some(settled_usage(server.pid()));
        }
    }
    let baseline = baseline.unwrap();
    let last = settled_usage(server.pid());
    println!("after {WARM_UP} clients: {baseline:?}; after {CYCLES}: {last:?}");
    assert_eq!(last.fds, baseline.fds, "fds leak: {baseline:?} -> {last:?}");
    assert_eq!(
        last.threads, baseline.threads,
        "threads leak: {baseline:?} -> {last:?}"
    );
    assert!(
        last.rss_kib <= baseline.rss_kib + RSS_SLACK_KIB,
        "RSS grows: {baseline:?} -> {last:?}"
    );
}
