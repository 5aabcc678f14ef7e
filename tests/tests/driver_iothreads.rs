//! Queues served by iothreads, seen from the userspace driver: each queue is served by exactly
//! the thread the iothread-vq-mapping names (the server's trace records say which thread served
//! which queue), data written through one iothread's queue reads back through another's, and a
//! TMF on one iothread waits for the command it aborts on another.
//!
//! Build the server first: `cargo build -p server && cargo test -p tests --test driver_iothreads`
//! (same CARGO_TARGET_DIR), or point VUS_SERVER_BIN at the binary.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use tests::driver::FIRST_REQUEST_QUEUE;
use tests::scsi::cdb;
use tests::split_queue::Buffer;
use tests::{DriverOptions, ScsiRequest, ServerProcess, UsedChain, VirtioScsiDriver};
use virtio_bindings::virtio_scsi::{
    VIRTIO_SCSI_S_FUNCTION_SUCCEEDED, VIRTIO_SCSI_T_TMF_ABORT_TASK,
    VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET, VIRTIO_SCSI_T_TMF_QUERY_TASK,
    VIRTIO_SCSI_T_TMF_QUERY_TASK_SET,
};

const BLOCK: usize = 512;
const WRITE_10: u8 = 0x2A;
const READ_10: u8 = 0x28;

fn start(args: &[&str]) -> ServerProcess {
    ServerProcess::start(args).unwrap_or_else(|e| panic!("{e}"))
}

fn connect(server: &ServerProcess) -> VirtioScsiDriver {
    let options = DriverOptions {
        timeout: Duration::from_secs(5),
        ..DriverOptions::default()
    };
    VirtioScsiDriver::connect(server.socket(), options).unwrap_or_else(|e| {
        panic!(
            "driver init failed: {e}\nserver stderr:\n{}",
            server.stderr()
        )
    })
}

/// Virtqueue -> names of the threads whose "queue served" records name it.
fn served_by(stderr: &str) -> BTreeMap<u64, BTreeSet<String>> {
    let mut served: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    for line in stderr.lines() {
        let Ok(record) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if record["msg"] != "queue served" {
            continue;
        }
        let (Some(vq), Some(thread)) = (record["vq"].as_u64(), record["iothread"].as_str()) else {
            panic!("a queue served record without vq or iothread: {line}");
        };
        served.entry(vq).or_default().insert(thread.to_string());
    }
    served
}

fn threads(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|name| name.to_string()).collect()
}

#[test]
fn every_queue_is_served_by_the_iothread_the_mapping_names() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.img");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(4 << 20)
        .unwrap();
    let disk = format!("path={}", path.display());
    let mapping = r#"[{"iothread":"io0","vqs":["ctrl",0,2]},{"iothread":"io1","vqs":[1,3]}]"#;
    let mut server = start(&[
        "--disk",
        &disk,
        "--num-queues",
        "4",
        "--iothread",
        "io0",
        "--iothread",
        "io1",
        "--iothread-vq-mapping",
        mapping,
        "--log-level",
        "trace",
        "--log-format",
        "json",
    ]);
    let mut driver = connect(&server);
    while !driver.test_unit_ready(0).unwrap().is_good() {}

    // Each request queue writes its own block, and the next queue (another iothread) reads it.
    for queue in 0..4u16 {
        let data = vec![0xA0 + queue as u8; BLOCK];
        let lba = u32::from(queue);
        let written = driver
            .scsi_command(queue, 0, &cdb::lba10(WRITE_10, 0, lba, 1), Some(&data), 0)
            .unwrap();
        assert!(written.is_good(), "write on queue {queue}: {written:?}");
        let reader = (queue + 1) % 4;
        let read = driver
            .scsi_command(
                reader,
                0,
                &cdb::lba10(READ_10, 0, lba, 1),
                None,
                BLOCK as u32,
            )
            .unwrap();
        assert!(read.is_good(), "read on queue {reader}: {read:?}");
        assert_eq!(
            read.data_in, data,
            "block {lba} written on {queue}, read on {reader}"
        );
    }
    let response = driver.tmf(0, VIRTIO_SCSI_T_TMF_QUERY_TASK_SET, 0).unwrap();
    assert_eq!(
        response, 0,
        "QUERY TASK SET with nothing in flight: FUNCTION COMPLETE"
    );

    let expected = BTreeMap::from([
        (0, threads(&["io0"])),
        (2, threads(&["io0"])),
        (3, threads(&["io1"])),
        (4, threads(&["io0"])),
        (5, threads(&["io1"])),
    ]);
    // Records go through an asynchronous drain: give them a moment to reach stderr.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut served = served_by(&server.stderr());
    while Instant::now() < deadline && expected.iter().any(|(vq, _)| !served.contains_key(vq)) {
        std::thread::sleep(Duration::from_millis(20));
        served = served_by(&server.stderr());
    }
    for (vq, names) in &expected {
        assert_eq!(
            served.get(vq),
            Some(names),
            "virtqueue {vq}; served: {served:?}"
        );
    }
    // The event queue stays on the main loop, the only thread of neither name.
    let event_threads = served.get(&1).cloned().unwrap_or_default();
    assert!(
        event_threads
            .iter()
            .all(|name| name != "io0" && name != "io1"),
        "{event_threads:?}"
    );
    server.terminate(Duration::from_secs(5)).unwrap();
}

#[test]
fn without_iothreads_the_main_loop_serves_every_queue() {
    let mut server = start(&[
        "--disk",
        "null,size=1M",
        "--num-queues",
        "2",
        "--log-level",
        "trace",
        "--log-format",
        "json",
    ]);
    let mut driver = connect(&server);
    for queue in 0..2 {
        while !driver
            .scsi_command(queue, 0, &cdb::test_unit_ready(), None, 0)
            .unwrap()
            .is_good()
        {}
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut served = served_by(&server.stderr());
    while Instant::now() < deadline && !(served.contains_key(&2) && served.contains_key(&3)) {
        std::thread::sleep(Duration::from_millis(20));
        served = served_by(&server.stderr());
    }
    for vq in [2, 3] {
        assert_eq!(served.get(&vq), Some(&threads(&["main"])), "{served:?}");
    }
    server.terminate(Duration::from_secs(5)).unwrap();
}

/// The "I/O engine" record's `aio` field.
fn engine_in_use(stderr: &str) -> Option<String> {
    stderr
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|record| record["msg"] == "I/O engine")
        .and_then(|record| record["aio"].as_str().map(str::to_string))
}

#[test]
fn every_aio_engine_moves_data_on_an_iothread() {
    for aio in ["io_uring", "threads", "sync"] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        std::fs::File::create(&path)
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        let disk = format!("path={}", path.display());
        let mut server = start(&[
            "--disk",
            &disk,
            "--iothread",
            "io0",
            "--aio",
            aio,
            "--log-format",
            "json",
        ]);
        let mut driver = connect(&server);
        while !driver.test_unit_ready(0).unwrap().is_good() {}
        let data: Vec<u8> = (0..8 * BLOCK).map(|i| (i % 251) as u8).collect();
        let written = driver
            .scsi_command(0, 0, &cdb::lba10(WRITE_10, 0, 16, 8), Some(&data), 0)
            .unwrap();
        assert!(written.is_good(), "{aio}: {written:?}");
        let read = driver
            .scsi_command(0, 0, &cdb::lba10(READ_10, 0, 16, 8), None, 8 * BLOCK as u32)
            .unwrap();
        assert!(read.is_good(), "{aio}: {read:?}");
        assert_eq!(read.data_in, data, "{aio}");
        let mut on_disk = vec![0u8; data.len()];
        std::os::unix::fs::FileExt::read_exact_at(
            &std::fs::File::open(&path).unwrap(),
            &mut on_disk,
            16 * BLOCK as u64,
        )
        .unwrap();
        assert_eq!(on_disk, data, "{aio}: the backing file");
        server.terminate(Duration::from_secs(5)).unwrap();
        assert_eq!(engine_in_use(&server.stderr()).as_deref(), Some(aio));
    }
}

/// A client that leaves with queues on iothreads: the queues are taken back, and the next client
/// gets a working device whose queues are served by the same threads.
#[test]
fn a_second_client_after_a_disconnect_is_served_by_the_iothreads() {
    let mut server = start(&[
        "--disk",
        "null,size=1M",
        "--num-queues",
        "2",
        "--iothread",
        "io0",
        "--iothread",
        "io1",
        "--log-level",
        "trace",
        "--log-format",
        "json",
    ]);
    for client in 0..2 {
        let mut driver = connect(&server);
        for queue in 0..2 {
            let mut tries = 0;
            while !driver
                .scsi_command(queue, 0, &cdb::test_unit_ready(), None, 0)
                .unwrap()
                .is_good()
            {
                tries += 1;
                assert!(tries < 4, "client {client}, queue {queue} never ready");
            }
            let read = driver
                .scsi_command(queue, 0, &cdb::lba10(READ_10, 0, 0, 1), None, BLOCK as u32)
                .unwrap();
            assert!(read.is_good(), "client {client}, queue {queue}: {read:?}");
        }
        drop(driver);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let released = |stderr: &str| {
        stderr
            .lines()
            .filter(|line| line.contains("\"queue released\""))
            .count()
    };
    while Instant::now() < deadline && released(&server.stderr()) < 2 {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(released(&server.stderr()) >= 2, "{}", server.stderr());
    // Round-robin without a mapping: request queue 0 on io0, 1 on io1, for both clients.
    let served = served_by(&server.stderr());
    assert_eq!(served.get(&2), Some(&threads(&["io0"])), "{served:?}");
    assert_eq!(served.get(&3), Some(&threads(&["io1"])), "{served:?}");
    assert!(server.is_running());
    server.terminate(Duration::from_secs(5)).unwrap();
}

/// The "queue stats" record the server logs for `vq` when the client goes away.
fn queue_stats(stderr: &str, vq: u64) -> Option<serde_json::Value> {
    stderr
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|record| record["msg"] == "queue stats" && record["vq"] == vq)
}

#[test]
fn a_disconnect_logs_each_request_queues_counters() {
    let mut server = start(&[
        "--disk",
        "null,size=1M",
        "--num-queues",
        "2",
        "--iothread",
        "io0",
        // Polling would find chains the driver never kicked for, and how many depends on timing.
        "--poll-max-ns",
        "0",
        "--log-format",
        "json",
    ]);
    let mut driver = connect(&server);
    let mut requests = 1;
    while !driver.test_unit_ready(0).unwrap().is_good() {
        requests += 1;
    }
    for lba in 0..8 {
        let read = driver
            .scsi_command(1, 0, &cdb::lba10(READ_10, 0, lba, 1), None, BLOCK as u32)
            .unwrap();
        assert!(read.is_good(), "{read:?}");
    }
    drop(driver);
    let deadline = Instant::now() + Duration::from_secs(5);
    let (first, second) = loop {
        let stderr = server.stderr();
        if let (Some(first), Some(second)) = (queue_stats(&stderr, 2), queue_stats(&stderr, 3)) {
            break (first, second);
        }
        assert!(
            Instant::now() < deadline,
            "no queue stats records:\n{stderr}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(first["requests"], requests, "{first}");
    assert_eq!(first["errors"], 1, "the power-on unit attention: {first}");
    assert_eq!(second["requests"], 8, "{second}");
    assert_eq!(second["bytes_read"], 8 * BLOCK as u64, "{second}");
    assert_eq!(second["bytes_written"], 0, "{second}");
    for record in [&first, &second] {
        let kicks = record["kicks"].as_u64().unwrap();
        let interrupts = record["interrupts"].as_u64().unwrap();
        let answered = record["requests"].as_u64().unwrap();
        assert!((1..=answered).contains(&kicks), "{record}");
        assert!((1..=answered).contains(&interrupts), "{record}");
        // One command at a time: every chain is kicked for, none left for a re-check.
        assert_eq!(record["rechecks"], 0, "{record}");
    }
    let stderr = server.stderr();
    assert!(
        stderr
            .lines()
            .any(|line| line.contains("\"iothread stats\"")
                && line.contains("\"iothread\":\"io0\"")
                && line.contains("\"busy_ns\"")),
        "{stderr}"
    );
    server.terminate(Duration::from_secs(5)).unwrap();
}

/// What one answer may be while LUNs are resized, added and removed: each is checked alone, so
/// that a command run half against the old LUN table and half against the new one shows.
fn check_answer(lun: u16, opcode: u8, result: &tests::ScsiResult, seen: &mut BTreeSet<String>) {
    const UNIT_ATTENTION: u8 = 0x06;
    const ILLEGAL_REQUEST: u8 = 0x05;
    let capacities: &[u64] = match lun {
        1 => &[SMALL / BLOCK as u64, LARGE / BLOCK as u64],
        _ => &[HOTPLUGGED / BLOCK as u64],
    };
    if result.is_good() {
        if opcode == READ_CAPACITY_10 {
            let last = u32::from_be_bytes(result.data_in[..4].try_into().unwrap());
            let blocks = u64::from(last) + 1;
            assert!(
                capacities.contains(&blocks),
                "LUN {lun}: READ CAPACITY says {blocks} blocks, never set: {result:?}"
            );
            seen.insert(format!("lun {lun}: {blocks} blocks"));
        } else {
            seen.insert(format!("lun {lun}: {opcode:#x} good"));
        }
        return;
    }
    let sense = result.sense_key();
    let allowed = match sense {
        // POWER ON (hotplugged LUN 2), REPORTED LUNS DATA HAS CHANGED (LUN 2 came or went),
        // CAPACITY DATA HAS CHANGED (LUN 1 resized).
        Some((UNIT_ATTENTION, 0x29, 0x00)) => lun == 2,
        Some((UNIT_ATTENTION, 0x3f, 0x0e)) => true,
        Some((UNIT_ATTENTION, 0x2a, 0x09)) => lun == 1,
        // LOGICAL UNIT NOT SUPPORTED: LUN 2 while it is removed.
        Some((ILLEGAL_REQUEST, 0x25, 0x00)) => lun == 2,
        _ => false,
    };
    assert!(
        result.response == tests::scsi::VIRTIO_SCSI_S_OK && allowed,
        "LUN {lun} opcode {opcode:#x}: {result:?}"
    );
    seen.insert(format!("lun {lun}: sense {sense:?}"));
}

const SMALL: u64 = 8 << 20;
const LARGE: u64 = 16 << 20;
const HOTPLUGGED: u64 = 4 << 20;
const READ_CAPACITY_10: u8 = 0x25;

#[test]
fn luns_swapped_under_io_on_two_iothreads_are_never_seen_torn() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    let control = dir.path().join("ctl.sock");
    let control_arg = control.display().to_string();
    let mut server = start(&[
        "--disk",
        "null,size=8M,lun=0",
        "--disk",
        "null,size=8M,lun=1",
        "--num-queues",
        "2",
        "--iothread",
        "io0",
        "--iothread",
        "io1",
        "--control-socket",
        &control_arg,
    ]);
    let mut driver = connect(&server);
    for lun in [0, 1] {
        while !driver.test_unit_ready(lun).unwrap().is_good() {}
    }
    let stop = Arc::new(AtomicBool::new(false));
    // Each request queue (one per iothread) keeps commands for LUNs 1 and 2 in flight, and
    // checks every answer, until the control path has done its rounds.
    let workers: Vec<_> = (0..2u16)
        .map(|rq| {
            let mut queue = driver.take_queue(FIRST_REQUEST_QUEUE + rq).unwrap();
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let request = |i: u32| {
                    let lun = 1 + (i % 2) as u16;
                    let address = tests::scsi::encode_lun(0, lun).unwrap();
                    let (cdb, data_in) = match i % 3 {
                        0 => (cdb::read_capacity10(), 8),
                        // Within the smaller size of LUN 1 and the size of LUN 2.
                        1 => (cdb::lba10(READ_10, 0, i % 4096, 1), BLOCK as u32),
                        _ => (cdb::test_unit_ready(), 0),
                    };
                    let opcode = cdb[0];
                    let request = tests::ScsiRequest::new(address, &cdb).data_in(data_in);
                    ((lun, opcode), request.tag(u64::from(i)))
                };
                let mut sent = BTreeMap::new();
                let mut seen = BTreeSet::new();
                let mut next = 0u32;
                let mut completed = 0u64;
                while !stop.load(Ordering::Relaxed) || !sent.is_empty() {
                    while sent.len() < 16 && !stop.load(Ordering::Relaxed) {
                        let (what, request) = request(next);
                        queue.submit(&request).unwrap();
                        sent.insert(u64::from(next), what);
                        next += 1;
                    }
                    for (_, completion) in queue.reap().unwrap() {
                        let UsedChain::Scsi(result) = completion else {
                            panic!("queue {rq}: {completion:?}");
                        };
                        let (lun, opcode) = sent.remove(&result.tag).unwrap();
                        check_answer(lun, opcode, &result, &mut seen);
                        completed += 1;
                    }
                }
                (queue, completed, seen)
            })
        })
        .collect();

    let ctl = |args: &[&str]| {
        let (status, reply) = tests::server_process::ctl(&control, args).unwrap();
        assert_eq!(status, Some(0), "ctl {args:?}: {reply}");
    };
    let hotplugged = format!("null,size={HOTPLUGGED},lun=2");
    for _ in 0..15 {
        ctl(&["resize", "1", &LARGE.to_string()]);
        ctl(&["add-disk", &hotplugged]);
        ctl(&["resize", "1", &SMALL.to_string()]);
        ctl(&["remove-disk", "2"]);
    }
    stop.store(true, Ordering::Relaxed);
    let mut seen = BTreeSet::new();
    for worker in workers {
        let (queue, completed, seen_here) = worker.join().unwrap();
        assert!(completed > 100, "only {completed} commands on a queue");
        driver.return_queue(queue);
        seen.extend(seen_here);
    }
    // The swaps really happened under the commands: both sizes, and LUN 2 both present and
    // absent, were seen.
    for expected in [
        format!("lun 1: {} blocks", SMALL / BLOCK as u64),
        format!("lun 1: {} blocks", LARGE / BLOCK as u64),
        format!("lun 2: {} blocks", HOTPLUGGED / BLOCK as u64),
        format!("lun 2: sense {:?}", Some((0x05u8, 0x25u8, 0u8))),
    ] {
        assert!(seen.contains(&expected), "never saw {expected}: {seen:?}");
    }
    server.terminate(Duration::from_secs(5)).unwrap();
}

/// How long the null disk holds each command in the TMF test: long enough that a TMF answered
/// without waiting would show, short enough for CI.
const HELD: Duration = Duration::from_millis(500);

/// Sends `subtype` for (lun 0, `tag`) on the control queue while a READ with that tag is held in
/// flight on request queue 0; returns the TMF's response byte, after checking that the TMF was
/// answered only once the READ had completed.
fn tmf_while_read_in_flight(driver: &mut VirtioScsiDriver, subtype: u32, tag: u64) -> u8 {
    const CTRL: u16 = 0;
    const REQUEST: u16 = 2;
    let lun = tests::scsi::encode_lun(0, 0).unwrap();
    let mut read = ScsiRequest::new(lun, &cdb::lba10(READ_10, 0, 0, 1)).data_in(BLOCK as u32);
    read.tag = Some(tag);
    let sent = Instant::now();
    let read_head = driver.submit(REQUEST, &read).unwrap();
    // The two queues are served by different threads in no set order: the TMF must not reach
    // the device before the READ does. QUERY TASK answers FUNCTION SUCCEEDED once it has.
    while driver.tmf(0, VIRTIO_SCSI_T_TMF_QUERY_TASK, tag).unwrap()
        != VIRTIO_SCSI_S_FUNCTION_SUCCEEDED as u8
    {
        assert!(
            sent.elapsed() < HELD / 2,
            "the READ never showed as in flight"
        );
    }

    let memory = driver.memory().clone();
    let req = tests::scsi::encode_tmf_req(subtype, lun, tag);
    let req_gpa = memory.alloc(req.len() as u64, 8).unwrap();
    let resp_gpa = memory.alloc(1, 8).unwrap();
    memory.write(req_gpa, &req).unwrap();
    memory.write(resp_gpa, &[0xEE]).unwrap();
    let tmf_head = driver
        .submit_chain(
            CTRL,
            &[
                Buffer::readable(req_gpa, req.len() as u32),
                Buffer::writable(resp_gpa, 1),
            ],
        )
        .unwrap();

    let mut read_done = None;
    let deadline = sent + Duration::from_secs(10);
    let tmf_done = loop {
        assert!(Instant::now() < deadline, "no TMF answer");
        let mut poll_read = |driver: &mut VirtioScsiDriver| {
            for (head, completion) in driver.poll_completions(REQUEST).unwrap() {
                assert_eq!(head, read_head);
                let UsedChain::Scsi(result) = completion else {
                    panic!("the READ came back raw");
                };
                read_done = Some((Instant::now(), result));
            }
        };
        poll_read(driver);
        let tmf = driver.poll_completions(CTRL).unwrap();
        if let Some((head, _)) = tmf.first() {
            assert_eq!(*head, tmf_head);
            // The device adds the READ to its used ring before the TMF sees the task leave:
            // a READ completed before the TMF answer is visible by now.
            poll_read(driver);
            break Instant::now();
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let (read_at, result) = read_done.unwrap_or_else(|| {
        panic!(
            "TMF {subtype} answered {:?} after sending, before the READ it waits for completed",
            tmf_done - sent
        )
    });
    assert!(read_at <= tmf_done);
    assert!(
        tmf_done - sent >= HELD,
        "answered after {:?}; the READ: {result:?}",
        tmf_done - sent
    );
    // The command was not cut short: the null disk held it, then it completed.
    assert!(result.is_good(), "{result:?}");
    let response = memory.read_vec(resp_gpa, 1).unwrap()[0];
    memory.free(req_gpa).unwrap();
    memory.free(resp_gpa).unwrap();
    response
}

/// virtio 1.2 §5.6.6.2: a TMF that aborts commands is answered only after they completed, even
/// when the control queue and the command's request queue are served by different iothreads.
#[test]
fn tmfs_on_one_iothread_wait_for_the_command_in_flight_on_another() {
    let disk = format!("null,size=1M,latency-us={}", HELD.as_micros());
    let mapping = r#"[{"iothread":"io0","vqs":["ctrl"]},{"iothread":"io1","vqs":[0]}]"#;
    let mut server = start(&[
        "--disk",
        &disk,
        "--iothread",
        "io0",
        "--iothread",
        "io1",
        "--iothread-vq-mapping",
        mapping,
    ]);
    let mut driver = connect(&server);
    while !driver.test_unit_ready(0).unwrap().is_good() {}
    let function_complete = 0;
    assert_eq!(
        tmf_while_read_in_flight(&mut driver, VIRTIO_SCSI_T_TMF_ABORT_TASK, 0x51),
        function_complete,
        "ABORT TASK"
    );
    assert_eq!(
        tmf_while_read_in_flight(&mut driver, VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET, 0x52),
        VIRTIO_SCSI_S_FUNCTION_SUCCEEDED as u8,
        "LOGICAL UNIT RESET"
    );
    server.terminate(Duration::from_secs(5)).unwrap();
}
