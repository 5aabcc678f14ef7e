//! The server against an independent peer: the rust-vmm `vfio_user::Client`.

mod common;

use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use common::{read_eventfd, Running, BAR0_SIZE, BAR1_SIZE, CONFIG, DOORBELL, MSIX, MSIX_VECTORS};
use vfio_bindings::bindings::vfio::{
    VFIO_IRQ_INFO_EVENTFD, VFIO_IRQ_INFO_MASKABLE, VFIO_IRQ_SET_ACTION_TRIGGER,
    VFIO_IRQ_SET_DATA_EVENTFD, VFIO_IRQ_SET_DATA_NONE, VFIO_REGION_INFO_FLAG_MMAP,
};
use vfio_user::Client;

#[test]
fn version_device_region_and_irq_info() {
    let server = Running::start();
    let mut client = Client::new(&server.path).unwrap();
    // The crate reports resettable inverted: false means the RESET flag was set.
    assert!(!client.resettable());
    assert_eq!(client.region(0).unwrap().size, BAR0_SIZE);
    assert!(client.region(0).unwrap().file_offset.is_none());
    let bar1 = client.region(1).unwrap();
    assert_eq!(bar1.size, BAR1_SIZE);
    assert!(bar1.flags & VFIO_REGION_INFO_FLAG_MMAP != 0);
    assert!(bar1.file_offset.is_some());
    assert_eq!(bar1.sparse_areas.len(), 1);
    assert_eq!(
        (bar1.sparse_areas[0].offset, bar1.sparse_areas[0].size),
        (0x1000, 0x1000)
    );
    assert_eq!(client.region(CONFIG).unwrap().size, 256);
    assert!(client.region(8).is_some());
    let msix = client.get_irq_info(MSIX).unwrap();
    assert_eq!(msix.count, MSIX_VECTORS);
    assert_eq!(msix.flags, VFIO_IRQ_INFO_EVENTFD | VFIO_IRQ_INFO_MASKABLE);
}

#[test]
fn region_read_and_write() {
    let server = Running::start();
    let mut client = Client::new(&server.path).unwrap();
    let mut vendor = [0u8; 2];
    client.region_read(CONFIG, 0, &mut vendor).unwrap();
    assert_eq!(u16::from_le_bytes(vendor), 0x1af4);
    client.region_write(0, 0x10, &[1, 2, 3, 4]).unwrap();
    let mut back = [0u8; 4];
    client.region_read(0, 0x10, &mut back).unwrap();
    assert_eq!(back, [1, 2, 3, 4]);
}

#[test]
fn dma_map_of_a_memfd_is_reachable_by_the_device_and_irqs_fire() {
    let server = Running::start();
    let mut client = Client::new(&server.path).unwrap();
    let guest = std::fs::File::from(common::memfd(0x2000));
    guest.write_all_at(&41u64.to_le_bytes(), 0x1010).unwrap();
    client
        .dma_map(0x1000, 0x10000, 0x1000, guest.as_raw_fd())
        .unwrap();
    server.wait_for(|r| r.mapped == [(0x10000, 0x1000)]);

    let vectors: Vec<_> = (0..2).map(|_| common::eventfd()).collect();
    let raw: Vec<_> = vectors.iter().map(AsRawFd::as_raw_fd).collect();
    client
        .set_irqs(
            MSIX,
            VFIO_IRQ_SET_ACTION_TRIGGER | VFIO_IRQ_SET_DATA_EVENTFD,
            0,
            2,
            &raw,
        )
        .unwrap();

    // The doorbell makes the device read guest memory at 0x10010 and write the value plus one
    // 8 bytes further, then raise vector 0.
    client
        .region_write(0, DOORBELL, &0x10010u64.to_le_bytes())
        .unwrap();
    let mut result = [0u8; 8];
    guest.read_exact_at(&mut result, 0x1018).unwrap();
    assert_eq!(u64::from_le_bytes(result), 42);
    assert_eq!(read_eventfd(&vectors[0]), Some(1));
    assert_eq!(read_eventfd(&vectors[1]), None);

    // DATA_NONE triggers a vector from the client's side.
    client
        .set_irqs(
            MSIX,
            VFIO_IRQ_SET_ACTION_TRIGGER | VFIO_IRQ_SET_DATA_NONE,
            1,
            1,
            &[],
        )
        .unwrap();
    assert_eq!(read_eventfd(&vectors[1]), Some(1));

    client.dma_unmap(0x10000, 0x1000).unwrap();
    server.wait_for(|r| r.unmapping == [(0x10000, 0x1000)]);
    // Unmapped: the doorbell can no longer reach the memory.
    guest.write_all_at(&[0u8; 8], 0x1018).unwrap();
    client
        .region_write(0, DOORBELL, &0x10010u64.to_le_bytes())
        .unwrap();
    guest.read_exact_at(&mut result, 0x1018).unwrap();
    assert_eq!(u64::from_le_bytes(result), 0);
}

#[test]
fn reset_reaches_the_device() {
    let server = Running::start();
    let mut client = Client::new(&server.path).unwrap();
    client.region_write(0, 0x10, &[9]).unwrap();
    client.reset().unwrap();
    assert_eq!(server.record.lock().unwrap().resets, 1);
    let mut back = [0xffu8];
    client.region_read(0, 0x10, &mut back).unwrap();
    assert_eq!(back, [0]);
}

#[test]
fn disconnect_resets_and_unmaps_then_a_second_client_is_served() {
    let server = Running::start();
    let mut first = Client::new(&server.path).unwrap();
    let guest = common::memfd(0x1000);
    first
        .dma_map(0, 0x20000, 0x1000, guest.as_raw_fd())
        .unwrap();
    let vector = common::eventfd();
    first
        .set_irqs(
            MSIX,
            VFIO_IRQ_SET_ACTION_TRIGGER | VFIO_IRQ_SET_DATA_EVENTFD,
            0,
            1,
            &[vector.as_raw_fd()],
        )
        .unwrap();
    first.shutdown().unwrap();
    drop(first);
    server.wait_for(|r| r.resets == 1 && r.unmapping == [(0x20000, 0x1000)]);
    assert!(server
        .record
        .lock()
        .unwrap()
        .irq_actions
        .iter()
        .any(|a| a == "2:Disable"));

    let mut second = Client::new(&server.path).unwrap();
    second
        .dma_map(0, 0x20000, 0x1000, guest.as_raw_fd())
        .unwrap();
    server.wait_for(|r| r.mapped.len() == 2);
    let mut vendor = [0u8; 2];
    second.region_read(CONFIG, 0, &mut vendor).unwrap();
    assert_eq!(u16::from_le_bytes(vendor), 0x1af4);
}

#[test]
fn a_second_client_is_refused_while_the_first_is_attached() {
    let server = Running::start();
    let mut first = Client::new(&server.path).unwrap();
    let mut second = std::os::unix::net::UnixStream::connect(&server.path).unwrap();
    second
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let mut byte = [0u8; 1];
    assert_eq!(
        std::io::Read::read(&mut second, &mut byte).unwrap(),
        0,
        "the second client's connection is closed"
    );
    let mut back = [0xffu8];
    first.region_read(0, 0x10, &mut back).unwrap();
    assert_eq!(back, [0], "the first client is still served");
}

/// The disposition of `signal` (its handler address, or SIG_DFL/SIG_IGN).
fn disposition(signal: libc::c_int) -> libc::sighandler_t {
    // SAFETY: an all-zero sigaction is a valid value to be overwritten; a null new action makes
    // sigaction only read the current one.
    unsafe {
        let mut current: libc::sigaction = std::mem::zeroed();
        assert_eq!(libc::sigaction(signal, std::ptr::null(), &mut current), 0);
        current.sa_sigaction
    }
}

/// Signals are the application's: serving a client installs, ignores or blocks none.
#[test]
fn serving_leaves_signal_handling_to_the_application() {
    let signals = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGPIPE];
    let before: Vec<_> = signals.iter().map(|&s| disposition(s)).collect();
    let server = Running::start();
    let client = Client::new(&server.path).unwrap();
    assert_eq!(client.region(0).unwrap().size, BAR0_SIZE);
    drop(client);
    let after: Vec<_> = signals.iter().map(|&s| disposition(s)).collect();
    assert_eq!(before, after);
    // The Rust runtime itself ignores SIGPIPE; the others are as the kernel set them.
    assert!(after[..3].iter().all(|&handler| handler == libc::SIG_DFL));
}
