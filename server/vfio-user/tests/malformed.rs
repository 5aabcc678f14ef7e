//! Raw-socket tests: every malformed message gets its exact error reply (or ends the connection,
//! for a broken header), and the next well-formed request still works.

mod common;

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;

use common::raw::{access, header_bytes, le, RawClient, ERROR, NO_REPLY, REPLY};
use common::{read_eventfd, Running, CONFIG, KICK_OFFSET, MSIX};

const VERSION: u16 = 1;
const DMA_MAP: u16 = 2;
const DMA_UNMAP: u16 = 3;
const GET_INFO: u16 = 4;
const GET_REGION_INFO: u16 = 5;
const GET_REGION_IO_FDS: u16 = 6;
const GET_IRQ_INFO: u16 = 7;
const SET_IRQS: u16 = 8;
const REGION_READ: u16 = 9;
const REGION_WRITE: u16 = 10;
const RESET: u16 = 13;
const TRIGGER_EVENTFD: u32 = (1 << 5) | (1 << 2);
const TRIGGER_NONE: u32 = (1 << 5) | 1;

fn dma_map(flags: u32, offset: u64, address: u64, size: u64) -> Vec<u8> {
    let mut b = le(&[32, flags]);
    for v in [offset, address, size] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b
}

fn dma_unmap(flags: u32, address: u64, size: u64) -> Vec<u8> {
    let mut b = le(&[24, flags]);
    b.extend_from_slice(&address.to_le_bytes());
    b.extend_from_slice(&size.to_le_bytes());
    b
}

fn region_info(argsz: u32, index: u32) -> Vec<u8> {
    let mut b = le(&[argsz, 0, index, 0]);
    b.extend_from_slice(&[0; 16]);
    b
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let (a, b) = UnixStream::pair().unwrap();
    (a.into(), b.into())
}

#[test]
fn unknown_command_is_enosys_and_stream_stays_in_sync() {
    let server = Running::start();
    let mut c = RawClient::negotiated(&server.path);
    c.expect_error(99, &[1, 2, 3, 4, 5], &[], libc::ENOSYS);
    c.expect_error(11, &[], &[], libc::ENOSYS);
    c.assert_in_sync();
}

#[test]
fn requests_before_version_and_a_second_version_are_einval() {
    let server = Running::start();
    let mut c = RawClient::connect(&server.path);
    c.expect_error(GET_INFO, &le(&[16, 0, 0, 0]), &[], libc::EINVAL);
    let mut version = vec![0, 0, 0, 0];
    version.extend_from_slice(b"{}\0");
    assert_eq!(c.request(VERSION, &version, &[]).header.flags, REPLY);
    c.expect_error(VERSION, &version, &[], libc::EINVAL);
    c.assert_in_sync();
}

#[test]
fn version_reply_is_major_0_minor_0_and_no_larger_than_the_request() {
    let server = Running::start();
    let mut c = RawClient::connect(&server.path);
    let mut version = vec![0, 0, 1, 0];
    version.extend_from_slice(b"{\"capabilities\":{\"max_msg_fds\":16}}\0");
    let reply = c.request(VERSION, &version, &[]);
    assert_eq!(reply.header.flags, REPLY);
    assert_eq!(&reply.body[..4], &[0, 0, 0, 0]);
    assert!(
        reply.body.len() <= version.len(),
        "{} > {}",
        reply.body.len(),
        version.len()
    );
    assert_eq!(reply.body.last(), Some(&0));
    let json: serde_json::Value =
        serde_json::from_slice(&reply.body[4..reply.body.len() - 1]).unwrap();
    assert_eq!(json["capabilities"]["max_msg_fds"], 16);
}

#[test]
fn bad_region_offset_and_count_are_einval() {
    let server = Running::start();
    let mut c = RawClient::negotiated(&server.path);
    c.expect_error(GET_REGION_INFO, &region_info(32, 50), &[], libc::EINVAL);
    c.expect_error(GET_REGION_INFO, &region_info(8, 0), &[], libc::EINVAL);
    c.expect_error(REGION_READ, &access(0, 50, 4), &[], libc::EINVAL);
    c.expect_error(REGION_READ, &access(0xffe, 0, 4), &[], libc::EINVAL);
    c.expect_error(REGION_READ, &access(u64::MAX, 0, 4), &[], libc::EINVAL);
    let mut write = access(0, CONFIG, 4);
    write.extend_from_slice(&[1, 2]);
    c.expect_error(REGION_WRITE, &write, &[], libc::EINVAL);
    c.expect_error(GET_IRQ_INFO, &le(&[16, 0, 9, 0]), &[], libc::EINVAL);
    c.expect_error(
        SET_IRQS,
        &le(&[20, TRIGGER_NONE, MSIX, 3, 2]),
        &[],
        libc::EINVAL,
    );
    c.expect_error(
        SET_IRQS,
        &le(&[20, TRIGGER_NONE, 9, 0, 1]),
        &[],
        libc::EINVAL,
    );
    c.expect_error(
        SET_IRQS,
        &le(&[20, TRIGGER_NONE | (1 << 3), MSIX, 0, 1]),
        &[],
        libc::EINVAL,
    );
    c.expect_error(DMA_MAP, &dma_map(3, 0, 0x1000, 0), &[], libc::EINVAL);
    c.expect_error(DMA_MAP, &dma_map(3, 0, 0x1001, 0x1000), &[], libc::EINVAL);
    c.expect_error(GET_INFO, &[0; 8], &[], libc::EINVAL);
    c.assert_in_sync();
}

#[test]
fn overlapping_dma_map_is_eexist_and_unknown_unmap_is_enoent() {
    let server = Running::start();
    let mut c = RawClient::negotiated(&server.path);
    assert_eq!(
        c.request(DMA_MAP, &dma_map(3, 0, 0x10000, 0x4000), &[])
            .header
            .flags,
        REPLY
    );
    c.expect_error(DMA_MAP, &dma_map(3, 0, 0x12000, 0x4000), &[], libc::EEXIST);
    c.expect_error(DMA_UNMAP, &dma_unmap(0, 0x40000, 0x1000), &[], libc::ENOENT);
    c.expect_error(DMA_UNMAP, &dma_unmap(2, 0x10000, 0x1000), &[], libc::EINVAL);
    // A partial unmap, echoed back in the reply.
    let reply = c.request(DMA_UNMAP, &dma_unmap(0, 0x11000, 0x1000), &[]);
    assert_eq!(reply.header.flags, REPLY);
    assert_eq!(reply.body, dma_unmap(0, 0x11000, 0x1000));
    assert_eq!(
        c.request(DMA_UNMAP, &dma_unmap(2, 0, 0), &[]).header.flags,
        REPLY
    );
    assert_eq!(
        c.request(DMA_MAP, &dma_map(3, 0, 0x10000, 0x4000), &[])
            .header
            .flags,
        REPLY
    );
    c.assert_in_sync();
}

#[test]
fn too_many_fds_are_einval_and_closed() {
    let server = Running::start();
    let mut c = RawClient::negotiated(&server.path);
    let (mine, theirs) = pipe();
    c.expect_error(RESET, &[], &[theirs.as_raw_fd()], libc::EINVAL);
    let seventeen: Vec<OwnedFd> = (0..17).map(|_| common::eventfd()).collect();
    let raw: Vec<_> = seventeen.iter().map(AsRawFd::as_raw_fd).collect();
    c.expect_error(
        SET_IRQS,
        &le(&[20, TRIGGER_EVENTFD, MSIX, 0, 4]),
        &raw,
        libc::EINVAL,
    );
    c.expect_error(
        SET_IRQS,
        &le(&[20, TRIGGER_EVENTFD, MSIX, 0, 1]),
        &raw[..2],
        libc::EINVAL,
    );
    c.expect_error(DMA_MAP, &dma_map(3, 0, 0, 0x1000), &raw[..2], libc::EINVAL);
    // The server closed its copy: with ours gone too, the other end sees end-of-file.
    drop(theirs);
    let mut mine = UnixStream::from(mine);
    mine.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    assert_eq!(std::io::Read::read(&mut mine, &mut [0u8; 1]).unwrap(), 0);
    c.assert_in_sync();
}

#[test]
fn oversized_messages_are_e2big() {
    let server = Running::start();
    let mut c = RawClient::negotiated(&server.path);
    c.expect_error(REGION_READ, &access(0, 0, 2 << 20), &[], libc::E2BIG);
    let count = (1 << 20) + 1;
    let mut write = access(0, 0, count);
    write.resize(16 + count as usize, 0);
    let id = c.send(REGION_WRITE, 0, &write, &[]);
    let reply = c.receive();
    assert_eq!(
        (reply.header.id, reply.header.flags, reply.header.error),
        (id, REPLY | ERROR, libc::E2BIG as u32)
    );
    c.assert_in_sync();
}

#[test]
fn posted_writes_get_no_reply_even_on_error() {
    let server = Running::start();
    let mut c = RawClient::negotiated(&server.path);
    let mut write = access(0x20, 0, 2);
    write.extend_from_slice(&[7, 8]);
    c.send(REGION_WRITE, NO_REPLY, &write, &[]);
    let mut bad = access(0, 42, 2);
    bad.extend_from_slice(&[7, 8]);
    c.send(REGION_WRITE, NO_REPLY, &bad, &[]);
    // The next reply is the read's: nothing was sent for the posted writes.
    let reply = c.request(REGION_READ, &access(0x20, 0, 2), &[]);
    assert_eq!(&reply.body[16..], &[7, 8]);
}

#[test]
fn region_info_argsz_retry_sparse_mmap_and_region_fd() {
    let server = Running::start();
    let mut c = RawClient::negotiated(&server.path);
    let short = c.request(GET_REGION_INFO, &region_info(32, 1), &[]);
    assert_eq!(short.body.len(), 32);
    let needed = u32::from_le_bytes(short.body[..4].try_into().unwrap());
    assert_eq!(needed, 32 + 16 + 16);
    let full = c.request(GET_REGION_INFO, &region_info(needed, 1), &[]);
    assert_eq!(full.body.len(), needed as usize);
    assert_eq!(full.fds.len(), 1);
    let word = |o: usize| u32::from_le_bytes(full.body[o..o + 4].try_into().unwrap());
    assert_eq!(word(4), 1 | 2 | 4 | 8, "READ|WRITE|MMAP|CAPS");
    assert_eq!(word(12), 32, "cap_offset");
    assert_eq!(
        &full.body[32..36],
        &[1, 0, 1, 0],
        "sparse mmap cap, version 1"
    );
    assert_eq!(word(40), 1, "nr_areas");
    assert_eq!(
        u64::from_le_bytes(full.body[48..56].try_into().unwrap()),
        0x1000
    );
    assert_eq!(
        u64::from_le_bytes(full.body[56..64].try_into().unwrap()),
        0x1000
    );
}

#[test]
fn region_io_fds_hand_out_the_kick_eventfd_the_loop_watches() {
    let server = Running::start();
    let mut c = RawClient::negotiated(&server.path);
    let short = c.request(GET_REGION_IO_FDS, &le(&[16, 0, 0, 0]), &[]);
    assert_eq!(short.body, le(&[16 + 40, 0, 0, 1]));
    assert!(short.fds.is_empty());
    let reply = c.request(GET_REGION_IO_FDS, &le(&[56, 0, 0, 0]), &[]);
    assert_eq!(reply.body.len(), 56);
    assert_eq!(
        u64::from_le_bytes(reply.body[16..24].try_into().unwrap()),
        KICK_OFFSET
    );
    assert_eq!(reply.fds.len(), 1);
    common::write_eventfd(&reply.fds[0]);
    server.wait_for(|r| r.kicks == 1);
    assert_eq!(read_eventfd(&reply.fds[0]), None, "the device drained it");
}

#[test]
fn short_header_then_close_lets_the_next_client_in() {
    let server = Running::start();
    let mut c = RawClient::negotiated(&server.path);
    c.send_bytes(&header_bytes(1, GET_INFO, 32, 0)[..8]);
    drop(c);
    let mut next = RawClient::negotiated(&server.path);
    next.assert_in_sync();
}

#[test]
fn garbled_header_closes_the_connection_and_the_next_client_is_served() {
    let server = Running::start();
    let mut c = RawClient::negotiated(&server.path);
    c.send_bytes(&header_bytes(1, GET_INFO, 4, 0));
    assert!(c.is_closed());
    let mut reply_typed = RawClient::negotiated(&server.path);
    reply_typed.send_bytes(&header_bytes(1, GET_INFO, 16, REPLY));
    assert!(reply_typed.is_closed());
    let mut next = RawClient::negotiated(&server.path);
    next.assert_in_sync();
    assert!(server.record.lock().unwrap().resets >= 2);
}
