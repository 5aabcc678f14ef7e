//! One server outlives many clients: 50 connect/disconnect cycles, each a full initialisation
//! with I/O on every request queue (two iothreads, a file disk and a null disk), leave the
//! server's RSS, open fds and threads where they were after the first few.
//!
//! Build the server first: `cargo build -p server && cargo test -p tests --test leaks`.

use std::time::Duration;

use tests::server_process::{settled_usage, sparse_image};
use tests::{DriverOptions, ServerProcess, VirtioScsiDriver};

const BLOCK: u32 = 512;
const CYCLES: usize = 50;
const WARM_UP: usize = 5;
/// RSS may move by allocator noise, not by a leak of a mapping or a queue per client.
const RSS_SLACK_KIB: u64 = 4096;

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
