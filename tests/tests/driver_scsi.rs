//! The userspace driver against the real `vfio-user-scsi` binary: probe, initialisation, SCSI
//! commands, task management and hostile descriptor chains.
//!
//! Build the server first: `cargo build -p server && cargo test -p tests --test driver_scsi`
//! (same CARGO_TARGET_DIR), or point VUS_SERVER_BIN at the binary.

use std::time::{Duration, Instant};

use tests::driver::{CONTROL_QUEUE, FIRST_REQUEST_QUEUE};
use tests::pci_probe::{PCI_CAP_ID_MSIX, PCI_CAP_ID_VNDR};
use tests::scsi::{self, cdb};
use tests::split_queue::{
    Buffer, Descriptor, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE,
};
use tests::virtio_pci::{self, common};
use tests::{
    DriverError, DriverOptions, KickMode, ServerProcess, UsedChain, VirtioScsiDriver, WaitMode,
};

const BLOCK: u32 = 512;

fn start(args: &[&str]) -> ServerProcess {
    ServerProcess::start(args).unwrap_or_else(|e| panic!("{e}"))
}

fn connect(server: &ServerProcess, options: DriverOptions) -> VirtioScsiDriver {
    VirtioScsiDriver::connect(server.socket(), options).unwrap_or_else(|e| {
        panic!(
            "driver init failed: {e}\nserver stderr:\n{}",
            server.stderr()
        )
    })
}

fn quick() -> DriverOptions {
    DriverOptions {
        timeout: Duration::from_secs(5),
        ..DriverOptions::default()
    }
}

/// A sparse backing file of `size` bytes in its own temporary directory.
fn disk_file(size: u64) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.img");
    std::fs::File::create(&path).unwrap().set_len(size).unwrap();
    let arg = format!("path={}", path.display());
    (dir, arg)
}

/// Clears the POWER ON / RESET unit attention a fresh LUN reports first.
fn settle(driver: &mut VirtioScsiDriver, lun: u16) {
    for _ in 0..4 {
        if driver.test_unit_ready(lun).unwrap().is_good() {
            return;
        }
    }
    panic!("LUN {lun} never became ready");
}

#[test]
fn probe_finds_every_capability_where_a_driver_expects_it() {
    let server = start(&["--num-queues", "2"]);
    let driver = VirtioScsiDriver::attach(server.socket(), quick()).unwrap();
    let p = driver.probe().clone();
    assert_eq!((p.vendor_id, p.device_id), (0x1af4, 0x1048));
    assert_eq!(p.revision_id, 1);
    assert_eq!(p.class_code, 0x010000);
    assert_eq!(p.header_type, 0);
    assert_eq!(p.interrupt_pin, 0);
    assert!(p.has_capability_list);
    assert_ne!(p.subsystem_vendor_id, 0);
    // OVMF binds a non-transitional virtio function only from 0x40 on (virtio 1.2 4.1.2.1).
    assert!(p.subsystem_id >= 0x40, "subsystem id {:#x}", p.subsystem_id);
    // Every capability in the list is a virtio vendor capability or MSI-X.
    for &(offset, id) in &p.capabilities {
        assert!(
            id == PCI_CAP_ID_VNDR || id == PCI_CAP_ID_MSIX,
            "cap {id:#x} at {offset:#x}"
        );
        assert!(offset >= 0x40 && offset % 4 == 0);
    }
    let structures = [p.common, p.notify, p.isr, p.device];
    let bar = p.common.bar;
    for cap in structures {
        assert_eq!(cap.bar, bar, "all virtio structures share one BAR");
        assert!(cap.bar < 6);
        assert!(cap.length > 0);
    }
    assert!(
        p.common.length >= common::SIZE - 4,
        "common cfg is {} bytes",
        p.common.length
    );
    assert!(p.device.length >= 36);
    assert!(p.isr.length >= 1);
    assert!(p.notify_off_multiplier % 2 == 0);
    assert!(p.pci_cfg.cap_len >= 20);
    // The virtio BAR is a 64-bit memory BAR; MSI-X lives in a separate BAR.
    let raw = p.bars[usize::from(bar)];
    assert_eq!(raw & 0x1, 0, "memory BAR");
    assert_eq!(raw & 0x6, 0x4, "64-bit BAR");
    assert_eq!(p.msix.table_size, 2 + 3);
    assert_ne!(p.msix.table_bir, bar);
    // Each structure fits in its BAR.
    let mut driver = driver;
    for cap in structures {
        let size = driver
            .pci()
            .client()
            .region_info(u32::from(cap.bar))
            .unwrap()
            .size;
        assert!(u64::from(cap.offset) + u64::from(cap.length) <= size);
    }
    let table = driver
        .pci()
        .client()
        .region_info(u32::from(p.msix.table_bir))
        .unwrap();
    assert!(u64::from(p.msix.table_offset) + 16 * u64::from(p.msix.table_size) <= table.size);
}

#[test]
fn init_negotiates_and_reads_the_scsi_config() {
    let server = start(&["--num-queues", "2", "--queue-size", "128"]);
    let mut driver = connect(&server, quick());
    let config = driver.config();
    assert_eq!(config.num_queues, 2);
    assert_eq!(config.seg_max, 128 - 2);
    assert_eq!(config.sense_size, 96);
    assert_eq!(config.cdb_size, 32);
    assert_eq!(config.max_channel, 0);
    assert!(config.cmd_per_lun > 0);
    assert!(config.max_sectors > 0);
    assert!(driver.features() & (1 << virtio_pci::VIRTIO_F_VERSION_1) != 0);
    assert!(driver.event_idx());
    assert_eq!(driver.num_request_queues(), 2);
    let status = driver.pci().status().unwrap();
    assert_eq!(
        status & virtio_pci::STATUS_DRIVER_OK,
        virtio_pci::STATUS_DRIVER_OK
    );
    assert_eq!(status & virtio_pci::STATUS_DEVICE_NEEDS_RESET, 0);
    // Each request queue has its own vector.
    assert_ne!(
        driver.queue(FIRST_REQUEST_QUEUE).unwrap().vector(),
        driver.queue(FIRST_REQUEST_QUEUE + 1).unwrap().vector()
    );
    settle(&mut driver, 0);
    // The writable sense and CDB sizes are honoured, by a second connection to the same server.
    drop(driver);
    let mut driver = connect(&server, quick());
    driver.set_sense_and_cdb_size(32, 16).unwrap();
    assert_eq!(
        (driver.config().sense_size, driver.config().cdb_size),
        (32, 16)
    );
}

#[test]
fn features_ok_is_refused_without_version_1() {
    let server = start(&[]);
    let mut driver = VirtioScsiDriver::attach(server.socket(), quick()).unwrap();
    driver.reset().unwrap();
    driver
        .pci()
        .set_status(virtio_pci::STATUS_ACKNOWLEDGE)
        .unwrap();
    driver
        .pci()
        .set_status(virtio_pci::STATUS_ACKNOWLEDGE | virtio_pci::STATUS_DRIVER)
        .unwrap();
    match driver.negotiate(0) {
        Err(DriverError::FeaturesRejected(_)) => {}
        other => panic!("FEATURES_OK without VERSION_1: {other:?}"),
    }
    // A proper negotiation afterwards works.
    driver.initialize().unwrap();
    settle(&mut driver, 0);
}

#[test]
fn inquiry_capacity_and_report_luns_describe_the_default_disk() {
    let server = start(&[]);
    let mut driver = connect(&server, quick());
    settle(&mut driver, 0);
    let inq = driver.inquiry(0, false, 0, 96).unwrap();
    assert!(inq.is_good(), "{inq:?}");
    assert!(inq.data_in.len() >= 36);
    assert_eq!(inq.data_in[0] & 0x1f, 0, "direct-access block device");
    let vpd0 = driver.inquiry(0, true, 0x00, 255).unwrap();
    assert!(vpd0.is_good());
    let pages = &vpd0.data_in[4..4 + usize::from(vpd0.data_in[3])];
    for page in [0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2] {
        assert!(
            pages.contains(&page),
            "VPD page {page:#x} missing from {pages:x?}"
        );
        let r = driver.inquiry(0, true, page, 255).unwrap();
        assert!(r.is_good(), "VPD {page:#x}: {r:?}");
        assert_eq!(r.data_in[1], page);
    }
    assert_eq!(driver.capacity(0).unwrap(), Some(((1u64 << 30) / 512, 512)));
    let rc10 = driver.read_capacity10(0).unwrap();
    assert!(rc10.is_good());
    assert_eq!(
        u32::from_be_bytes(rc10.data_in[0..4].try_into().unwrap()),
        (1u32 << 21) - 1
    );
    let luns = driver.report_luns(0, 256).unwrap();
    assert!(luns.is_good());
    assert_eq!(
        u32::from_be_bytes(luns.data_in[0..4].try_into().unwrap()),
        8
    );
    assert_eq!(&luns.data_in[8..16], &[0u8; 8]);
}

#[test]
fn a_written_pattern_reads_back_and_reaches_the_file() {
    let (dir, disk) = disk_file(8 << 20);
    let server = start(&["--disk", &disk]);
    let mut driver = connect(&server, quick());
    settle(&mut driver, 0);
    let pattern: Vec<u8> = (0..16 * BLOCK).map(|i| (i % 251) as u8).collect();
    let w = driver.write10(0, 100, &pattern, BLOCK).unwrap();
    assert!(w.is_good(), "{w:?}");
    let r = driver.read16(0, 100, 16, BLOCK).unwrap();
    assert!(r.is_good(), "{r:?}");
    assert_eq!(r.data_in, pattern);
    assert!(driver.sync_cache(0).unwrap().is_good());
    let file = std::fs::read(dir.path().join("disk.img")).unwrap();
    assert_eq!(&file[100 * 512..116 * 512], &pattern[..]);
    let w = driver
        .write16(0, 200, &pattern[..BLOCK as usize], BLOCK, true)
        .unwrap();
    assert!(w.is_good());
}

#[test]
fn errors_carry_the_right_sense() {
    let server = start(&[]);
    let mut driver = connect(&server, quick());
    settle(&mut driver, 0);
    let bad = driver
        .scsi_command(0, 0, &[0xff, 0, 0, 0, 0, 0], None, 0)
        .unwrap();
    assert_eq!(bad.status, scsi::SAM_STAT_CHECK_CONDITION);
    assert_eq!(bad.sense_key(), Some((0x05, 0x20, 0x00)));
    let blocks = (1u64 << 30) / 512;
    let past = driver.read16(0, blocks, 1, BLOCK).unwrap();
    assert_eq!(past.sense_key(), Some((0x05, 0x21, 0x00)));
    // A LUN that does not exist on an existing target: the virtio responses for it, or SAM's
    // LOGICAL UNIT NOT SUPPORTED (what QEMU answers and Linux's scan expects).
    let no_lun = driver.test_unit_ready(7).unwrap();
    assert!(
        no_lun.response == scsi::VIRTIO_SCSI_S_INCORRECT_LUN
            || no_lun.response == scsi::VIRTIO_SCSI_S_BAD_TARGET
            || no_lun.sense_key() == Some((0x05, 0x25, 0x00)),
        "{no_lun:?}"
    );
    let req = tests::ScsiRequest::new(scsi::encode_lun(3, 0).unwrap(), &cdb::test_unit_ready());
    let bad_target = driver.command(0, &req).unwrap();
    assert_eq!(bad_target.response, scsi::VIRTIO_SCSI_S_BAD_TARGET);
}

#[test]
fn task_management_functions_answer() {
    let server = start(&[]);
    let mut driver = connect(&server, quick());
    settle(&mut driver, 0);
    let accepted = [
        scsi::VIRTIO_SCSI_S_OK,
        scsi::VIRTIO_SCSI_S_FUNCTION_SUCCEEDED,
    ];
    for subtype in [
        scsi::VIRTIO_SCSI_T_TMF_ABORT_TASK,
        scsi::VIRTIO_SCSI_T_TMF_ABORT_TASK_SET,
        scsi::VIRTIO_SCSI_T_TMF_CLEAR_TASK_SET,
        scsi::VIRTIO_SCSI_T_TMF_I_T_NEXUS_RESET,
        scsi::VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET,
        scsi::VIRTIO_SCSI_T_TMF_QUERY_TASK,
        scsi::VIRTIO_SCSI_T_TMF_QUERY_TASK_SET,
    ] {
        let response = driver.tmf(0, subtype, 12345).unwrap();
        assert!(
            accepted.contains(&response),
            "TMF {subtype}: response {response}"
        );
    }
    assert_eq!(
        driver.tmf(0, scsi::VIRTIO_SCSI_T_TMF_CLEAR_ACA, 0).unwrap(),
        scsi::VIRTIO_SCSI_S_FUNCTION_REJECTED
    );
    assert_eq!(
        driver.tmf(0, 99, 0).unwrap(),
        scsi::VIRTIO_SCSI_S_FUNCTION_REJECTED
    );
    // After a LUN reset the LUN reports the reset once, then works.
    settle(&mut driver, 0);
    let an = driver.an_query(0, 0xffff_ffff).unwrap();
    assert!(
        an.response == scsi::VIRTIO_SCSI_S_OK
            || an.response == scsi::VIRTIO_SCSI_S_FUNCTION_REJECTED
    );
}

/// GET_REGION_IO_FDS with more queues than one reply may carry fds (QEMU's max_msg_fds is 16):
/// the first 16 request queues get an ioeventfd, the others are kicked by message, and every
/// queue serves commands. With 16 request queues (18 virtqueues) this used to answer EINVAL.
#[test]
fn io_eventfds_beyond_max_msg_fds_leave_the_other_queues_to_messages() {
    for queues in [16u16, 64] {
        let server = start(&["--num-queues", &queues.to_string(), "--queue-size", "16"]);
        let mut driver = connect(
            &server,
            DriverOptions {
                kick: KickMode::IoEventFd,
                mem_size: 16 << 20,
                ..quick()
            },
        );
        assert_eq!(driver.num_request_queues(), queues);
        settle(&mut driver, 0);
        for rq in 0..queues {
            let queue = FIRST_REQUEST_QUEUE + rq;
            assert_eq!(
                driver.queue(queue).unwrap().kicks_by_eventfd(),
                rq < 16,
                "{queues} queues: request queue {rq}"
            );
            let result = driver
                .scsi_command(rq, 0, &cdb::test_unit_ready(), None, 0)
                .unwrap();
            assert!(
                result.is_good(),
                "{queues} queues, request queue {rq}: {result:?}"
            );
        }
        assert!(!driver.queue(CONTROL_QUEUE).unwrap().kicks_by_eventfd());
    }
}

#[test]
fn many_requests_in_flight_complete_on_every_queue() {
    let server = start(&["--num-queues", "2", "--queue-size", "128"]);
    for kick in [KickMode::PostedWrite, KickMode::Write, KickMode::IoEventFd] {
        for event_idx in [true, false] {
            let mut driver = connect(
                &server,
                DriverOptions {
                    kick,
                    event_idx,
                    ..quick()
                },
            );
            settle(&mut driver, 0);
            for rq in 0..2 {
                let queue = FIRST_REQUEST_QUEUE + rq;
                let lun = scsi::encode_lun(0, 0).unwrap();
                let requests: Vec<_> = (0..32)
                    .map(|i| {
                        tests::ScsiRequest::new(lun, &cdb::lba10(cdb::READ_10, 0, i, 1))
                            .data_in(BLOCK)
                    })
                    .collect();
                let heads = driver.submit_batch(queue, &requests).unwrap();
                let mut left = heads.len();
                while left > 0 {
                    for (_, completion) in driver.reap(queue).unwrap() {
                        match completion {
                            UsedChain::Scsi(r) => assert!(r.is_good(), "{r:?}"),
                            UsedChain::Raw(u) => panic!("unexpected raw completion {u:?}"),
                        }
                        left -= 1;
                    }
                }
                assert_eq!(driver.in_flight(queue).unwrap(), 0);
            }
            drop(driver);
        }
    }
}

/// Runs one hostile chain on request queue 0. `build` gets the driver and a valid READ 10
/// request header in guest memory (address, length), publishes its chain and returns the head
/// and the most bytes the device may report as written. Afterwards the server must be alive and
/// either have returned the chain or asked for a reset; in both cases a READ works afterwards
/// (after re-initialising when asked).
fn hostile(build: impl FnOnce(&mut VirtioScsiDriver, u64, u32) -> (u16, u32)) {
    let mut server = start(&[]);
    let mut driver = connect(&server, quick());
    settle(&mut driver, 0);
    let cdb_size = driver.config().cdb_size as usize;
    let lun = scsi::encode_lun(0, 0).unwrap();
    let req = scsi::encode_cmd_req(lun, 77, &cdb::lba10(cdb::READ_10, 0, 0, 1), cdb_size).unwrap();
    let gpa = driver.memory().alloc(req.len() as u64, 8).unwrap();
    driver.memory().write(gpa, &req).unwrap();
    let (head, max_written) = build(&mut driver, gpa, req.len() as u32);

    let queue = FIRST_REQUEST_QUEUE;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut needs_reset = false;
    loop {
        let done = driver.poll_completions(queue).unwrap();
        if let Some((_, completion)) = done.into_iter().find(|(h, _)| *h == head) {
            if let UsedChain::Raw(used) = completion {
                assert!(
                    used.len <= max_written,
                    "used len {} > {max_written}",
                    used.len
                );
            }
            break;
        }
        let status = driver.pci().status().unwrap();
        if status & virtio_pci::STATUS_DEVICE_NEEDS_RESET != 0 {
            needs_reset = true;
            break;
        }
        assert!(
            Instant::now() < deadline,
            "hostile chain neither completed nor reported; stderr:\n{}",
            server.stderr()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        server.is_running(),
        "server died; stderr:\n{}",
        server.stderr()
    );
    if needs_reset {
        driver.initialize().unwrap();
    }
    settle(&mut driver, 0);
    let r = driver.read10(0, 0, 8, BLOCK).unwrap();
    assert!(r.is_good(), "after hostile chain: {r:?}");
}

/// Writes `descs` (index in the reserved set, descriptor with `next` given as an index in the
/// reserved set too) and publishes the first one.
fn raw_chain(driver: &mut VirtioScsiDriver, descs: &[(u64, u32, u16, usize)]) -> u16 {
    let ring = driver.queue(FIRST_REQUEST_QUEUE).unwrap().ring();
    let size = ring.size();
    let d = ring.reserve(descs.len()).unwrap();
    for (i, &(addr, len, flags, next)) in descs.iter().enumerate() {
        // A `next` past the reserved set stands for an index past the table.
        let next = d.get(next).copied().unwrap_or(size + next as u16);
        ring.write_descriptor(
            d[i],
            Descriptor {
                addr,
                len,
                flags,
                next,
            },
        )
        .unwrap();
    }
    driver.publish_raw(FIRST_REQUEST_QUEUE, d[0]).unwrap();
    d[0]
}

#[test]
fn hostile_descriptor_loop() {
    hostile(|driver, req, len| {
        let resp = driver.memory().alloc(4096, 8).unwrap();
        let write_next = VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT;
        let head = raw_chain(
            driver,
            &[
                (req, len, VIRTQ_DESC_F_NEXT, 1),
                (resp, 4096, write_next, 0),
            ],
        );
        (head, 4096)
    });
}

#[test]
fn hostile_next_beyond_the_table() {
    hostile(|driver, req, len| (raw_chain(driver, &[(req, len, VIRTQ_DESC_F_NEXT, 5)]), 0));
}

#[test]
fn hostile_address_outside_the_dma_map() {
    hostile(|driver, req, len| {
        let outside = driver.memory().base() + driver.memory().size() + (1 << 20);
        let chain = [
            Buffer::readable(req, len),
            Buffer::writable(outside, 108),
            Buffer::writable(outside + 4096, 512),
        ];
        (
            driver.submit_chain(FIRST_REQUEST_QUEUE, &chain).unwrap(),
            108 + 512,
        )
    });
}

#[test]
fn hostile_wrong_direction_buffers() {
    hostile(|driver, req, len| {
        let resp = driver.memory().alloc(4096, 8).unwrap();
        // A writable request, then a readable response: the reverse of what §5.6.6 requires.
        let chain = [Buffer::writable(req, len), Buffer::readable(resp, 108)];
        (
            driver.submit_chain(FIRST_REQUEST_QUEUE, &chain).unwrap(),
            len,
        )
    });
}

#[test]
fn hostile_response_buffer_too_small() {
    hostile(|driver, req, len| {
        let resp = driver.memory().alloc(4096, 8).unwrap();
        let chain = [Buffer::readable(req, len), Buffer::writable(resp, 4)];
        (driver.submit_chain(FIRST_REQUEST_QUEUE, &chain).unwrap(), 4)
    });
}

#[test]
fn hostile_zero_length_chain() {
    hostile(|driver, _, _| {
        let chain = [Buffer::readable(driver.memory().base(), 0)];
        (driver.submit_chain(FIRST_REQUEST_QUEUE, &chain).unwrap(), 0)
    });
}

#[test]
fn hostile_nested_indirect_table() {
    hostile(|driver, req, len| {
        let inner = driver.memory().alloc(32, 16).unwrap();
        let table = [
            Descriptor {
                addr: req,
                len,
                flags: VIRTQ_DESC_F_NEXT,
                next: 1,
            },
            Descriptor {
                addr: inner,
                len: 32,
                flags: VIRTQ_DESC_F_INDIRECT,
                next: 0,
            },
        ];
        let queue = driver.queue(FIRST_REQUEST_QUEUE).unwrap();
        let head = queue.ring().add_raw_indirect(&table).unwrap();
        queue.publish_raw(head).unwrap();
        (head, 0)
    });
}

#[test]
fn indirect_commands_work() {
    let server = start(&[]);
    let mut driver = connect(
        &server,
        DriverOptions {
            indirect_commands: true,
            ..quick()
        },
    );
    assert!(driver.features() & (1 << virtio_pci::VIRTIO_F_INDIRECT_DESC) != 0);
    settle(&mut driver, 0);
    let r = driver.read10(0, 0, 8, BLOCK).unwrap();
    assert!(r.is_good(), "{r:?}");
    assert_eq!(r.data_in.len(), 8 * BLOCK as usize);
}

#[test]
fn control_queue_survives_a_short_tmf_response() {
    let mut server = start(&[]);
    let mut driver = connect(&server, quick());
    settle(&mut driver, 0);
    let req = scsi::encode_tmf_req(
        scsi::VIRTIO_SCSI_T_TMF_ABORT_TASK,
        scsi::encode_lun(0, 0).unwrap(),
        1,
    );
    let gpa = driver.memory().alloc(req.len() as u64, 8).unwrap();
    driver.memory().write(gpa, &req).unwrap();
    // The request is cut short: 10 of 24 bytes.
    let head = driver
        .submit_chain(
            CONTROL_QUEUE,
            &[Buffer::readable(gpa, 10), Buffer::writable(gpa + 64, 1)],
        )
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if driver
            .poll_completions(CONTROL_QUEUE)
            .unwrap()
            .iter()
            .any(|(h, _)| *h == head)
        {
            break;
        }
        if driver.pci().status().unwrap() & virtio_pci::STATUS_DEVICE_NEEDS_RESET != 0 {
            driver.initialize().unwrap();
            break;
        }
        assert!(
            Instant::now() < deadline,
            "short TMF neither completed nor reported"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(server.is_running());
    settle(&mut driver, 0);
    assert!(driver.tmf(0, scsi::VIRTIO_SCSI_T_TMF_ABORT_TASK, 1).is_ok());
}

#[test]
fn queues_taken_out_of_the_driver_run_on_their_own_threads() {
    let server = start(&["--num-queues", "2", "--queue-size", "64"]);
    for kick in [KickMode::PostedWrite, KickMode::IoEventFd] {
        run_queues_on_threads(&server, kick);
    }
}

#[test]
fn raw_chains_are_reaped_in_batches_polling_and_on_interrupts() {
    let server = start(&["--queue-size", "64", "--iothread", "io0"]);
    for wait in [WaitMode::Interrupt, WaitMode::Poll] {
        let mut driver = connect(&server, DriverOptions { wait, ..quick() });
        settle(&mut driver, 0);
        let mut queue = driver.take_queue(FIRST_REQUEST_QUEUE).unwrap();
        let mem = queue.memory().clone();
        let config = driver.config();
        let lun = scsi::encode_lun(0, 0).unwrap();
        let response_len = scsi::CMD_RESP_HEADER_SIZE + config.sense_size as usize;
        let mut heads = Vec::new();
        let mut responses = Vec::new();
        for block in 0..8u32 {
            let request = scsi::encode_cmd_req(
                lun,
                u64::from(block) + 1,
                &cdb::lba10(cdb::READ_10, 0, block, 1),
                config.cdb_size as usize,
            )
            .unwrap();
            let request_gpa = mem.alloc(request.len() as u64, 8).unwrap();
            mem.write(request_gpa, &request).unwrap();
            let response = mem.alloc(response_len as u64, 8).unwrap();
            let data = mem.alloc(u64::from(BLOCK), 512).unwrap();
            heads.push(
                queue
                    .ring()
                    .add_indirect_chain(&[
                        Buffer::readable(request_gpa, request.len() as u32),
                        Buffer::writable(response, response_len as u32),
                        Buffer::writable(data, BLOCK),
                    ])
                    .unwrap(),
            );
            responses.push(response);
        }
        if queue.ring().publish_many(&heads).unwrap() {
            queue.kick().unwrap();
        }
        let mut used = Vec::new();
        let mut reaped = Vec::new();
        while reaped.len() < heads.len() {
            queue.reap_raw(&mut used, 3).unwrap();
            assert!((1..=3).contains(&used.len()), "{wait:?}: {used:?}");
            reaped.extend(used.iter().map(|u| u.id as u16));
        }
        reaped.sort_unstable();
        let mut expected = heads.clone();
        expected.sort_unstable();
        assert_eq!(reaped, expected, "{wait:?}");
        for response in responses {
            let answer = scsi::decode_cmd_resp(&mem.read_vec(response, response_len).unwrap());
            let answer = answer.unwrap();
            assert_eq!(
                (answer.response, answer.status),
                (scsi::VIRTIO_SCSI_S_OK, scsi::SAM_STAT_GOOD),
                "{wait:?}"
            );
        }
        assert_eq!(queue.ring().in_flight(), 0);
        // A raw reap would lose the completion of a command the queue built itself.
        queue
            .submit(&tests::ScsiRequest::new(lun, &cdb::test_unit_ready()))
            .unwrap();
        assert!(matches!(
            queue.reap_raw(&mut used, 1),
            Err(DriverError::RawReapWithCommands(_))
        ));
        queue.reap().unwrap();
        driver.return_queue(queue);
    }
}

/// Two request queues, each on its own thread, 16 deep until 256 READs completed on each.
fn run_queues_on_threads(server: &ServerProcess, kick: KickMode) {
    let mut driver = connect(server, DriverOptions { kick, ..quick() });
    settle(&mut driver, 0);
    let lun = scsi::encode_lun(0, 0).unwrap();
    let workers: Vec<_> = (0..2)
        .map(|rq| {
            let mut queue = driver.take_queue(FIRST_REQUEST_QUEUE + rq).unwrap();
            std::thread::spawn(move || {
                let read = |i: u32| {
                    tests::ScsiRequest::new(lun, &cdb::lba10(cdb::READ_10, 0, i, 1)).data_in(BLOCK)
                };
                // Keep 16 requests in flight until 256 have completed.
                let mut submitted = 0u32;
                let mut completed = 0u32;
                let first: Vec<_> = (0..16).map(read).collect();
                queue.submit_batch(&first).unwrap();
                submitted += 16;
                while completed < 256 {
                    for (_, completion) in queue.reap().unwrap() {
                        assert!(
                            matches!(&completion, UsedChain::Scsi(r) if r.is_good()),
                            "{completion:?}"
                        );
                        completed += 1;
                        if submitted < 256 {
                            queue.submit(&read(submitted)).unwrap();
                            submitted += 1;
                        }
                    }
                }
                queue
            })
        })
        .collect();
    for worker in workers {
        driver.return_queue(worker.join().unwrap());
    }
    // The driver's own conversation was not disturbed by the threads' posted kicks.
    assert!(driver.test_unit_ready(0).unwrap().is_good());
    assert_eq!(driver.in_flight(FIRST_REQUEST_QUEUE).unwrap(), 0);
}

#[test]
fn event_buffers_are_kept_until_there_is_an_event() {
    let server = start(&[]);
    let mut driver = connect(&server, quick());
    settle(&mut driver, 0);
    driver.post_event_buffers(4).unwrap();
    let events = driver.take_events(Duration::from_millis(300)).unwrap();
    assert!(events.is_empty(), "no event happened, yet {events:?}");
    assert_eq!(driver.in_flight(tests::driver::EVENT_QUEUE).unwrap(), 4);
    // The device goes on working with event buffers outstanding.
    assert!(driver.read10(0, 0, 1, BLOCK).unwrap().is_good());
}

#[test]
fn guest_memory_above_4_gib_and_without_event_idx_works() {
    let server = start(&[]);
    let options = DriverOptions {
        mem_base: 1 << 32,
        mem_size: 8 << 20,
        event_idx: false,
        indirect_desc: false,
        ..quick()
    };
    let mut driver = connect(&server, options);
    assert!(!driver.event_idx());
    assert_eq!(
        driver.features() & (1 << virtio_pci::VIRTIO_F_INDIRECT_DESC),
        0
    );
    settle(&mut driver, 0);
    let data = vec![0x5au8; 4096];
    assert!(driver.write10(0, 8, &data, BLOCK).unwrap().is_good());
    assert_eq!(driver.read10(0, 8, 8, BLOCK).unwrap().data_in, data);
}

#[test]
fn a_bad_command_line_exits_before_listening() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("never.sock");
    let socket = socket.to_str().unwrap();
    let (status, stderr) = ServerProcess::run_to_exit(
        &["--socket", socket, "--iothread-vq-mapping", "nope"],
        Duration::from_secs(10),
    )
    .unwrap();
    assert!(!status.success());
    assert!(stderr.contains("--iothread-vq-mapping"), "{stderr}");
    assert!(!std::path::Path::new(socket).exists());
}
