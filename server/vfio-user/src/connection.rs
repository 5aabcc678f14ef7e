//! One client's socket: cutting the byte stream into messages, receiving and sending fds with
//! SCM_RIGHTS, and queueing replies the socket cannot take yet.
//!
//! Reads are buffered: one recvmsg takes whatever the socket holds (a burst of posted notify
//! writes is many messages) into a buffer kept for the connection's life, and a read that
//! returned less than it had room for, and no fds, showed the socket empty: the next read waits
//! for the next readiness event instead of asking for EAGAIN. Fds still reach the message they
//! came with. A client sends each message with one sendmsg, fds attached to its first byte, and
//! the kernel ends a read of a unix stream socket right after the bytes that carried fds; so the
//! fds a recvmsg returns belong to the message that holds the last byte it returned.

use std::collections::VecDeque;
use std::io;
use std::mem::size_of;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use mio::net::UnixStream;
use zerocopy::FromBytes;

use crate::message::{body_len, check_header, FramingError};
use crate::protocol::{Header, HEADER_SIZE, MAX_BODY_SIZE, MAX_MSG_FDS};

/// Room for more fds than we accept, so that an excess is seen (and refused) rather than
/// silently truncated by the kernel.
pub const MAX_RECV_FDS: usize = 4 * MAX_MSG_FDS;
/// The receive buffer, and the reply buffer kept between bursts: 512 posted notify writes
/// (32 bytes each), far more than the vCPUs of a guest queue at once, and more than any
/// message QEMU sends but a large REGION_WRITE, which grows the buffer while it is read.
const BUFFER_SIZE: usize = 16 * 1024;
/// A control message of `MAX_RECV_FDS` descriptors, in 8-byte words (cmsghdr alignment).
const CONTROL_WORDS: usize =
    (size_of::<libc::cmsghdr>() + MAX_RECV_FDS * size_of::<RawFd>()).div_ceil(size_of::<u64>());

/// A complete message read from the socket; its body is borrowed from the receive buffer.
#[derive(Debug)]
pub enum Incoming<'a> {
    Message {
        header: Header,
        body: &'a [u8],
        fds: Vec<OwnedFd>,
        fds_truncated: bool,
    },
    /// A body larger than `MAX_BODY_SIZE`: skipped unread so the stream stays in sync.
    Oversized { header: Header, body_len: usize },
}

#[derive(Debug)]
pub enum ReadOutcome<'a> {
    Incoming(Incoming<'a>),
    /// Nothing more to read for now.
    WouldBlock,
    /// The peer closed the socket; `partial` if it did so in the middle of a message.
    Closed {
        partial: bool,
    },
    Framing(FramingError),
}

/// The fds of one recvmsg, waiting for the message that holds `last_byte`.
struct FdBatch {
    /// Stream offset of the last byte the recvmsg returned.
    last_byte: u64,
    fds: Vec<OwnedFd>,
    /// The kernel dropped fds that did not fit.
    truncated: bool,
}

/// The rest of an oversized body, skipped as it arrives.
struct Discard {
    header: Header,
    body_len: usize,
    left: usize,
}

pub struct Connection {
    stream: UnixStream,
    /// Received bytes not yet taken as messages: `inbox[start..end]`.
    inbox: Vec<u8>,
    start: usize,
    end: usize,
    /// Bytes received since the connection began: the stream offset of `inbox[end]`.
    received: u64,
    /// Whether the socket may hold bytes not yet read: false once a read came back short
    /// without fds, until `readable`.
    may_have_data: bool,
    /// Read until EAGAIN or the end of the stream, not just until a short read.
    read_to_end: bool,
    fd_batches: VecDeque<FdBatch>,
    discard: Option<Discard>,
    /// Replies waiting for room on the socket: `outbox[sent..]`.
    outbox: Vec<u8>,
    sent: usize,
    /// The fds of a queued reply and the offset in `outbox` of its first byte, which carries
    /// them.
    outbox_fds: VecDeque<(usize, Vec<OwnedFd>)>,
}

impl Connection {
    pub fn new(stream: UnixStream) -> Connection {
        Connection {
            stream,
            inbox: vec![0; BUFFER_SIZE],
            start: 0,
            end: 0,
            received: 0,
            may_have_data: true,
            read_to_end: false,
            fd_batches: VecDeque::new(),
            discard: None,
            outbox: Vec::new(),
            sent: 0,
            outbox_fds: VecDeque::new(),
        }
    }

    pub fn stream_mut(&mut self) -> &mut UnixStream {
        &mut self.stream
    }

    /// The socket reported readiness (or may have): the next read asks it again. `peer_closed`
    /// when the peer shut its end down too: no event will follow the bytes before the end, so
    /// reads go on until they reach it.
    pub fn readable(&mut self, peer_closed: bool) {
        self.may_have_data = true;
        self.read_to_end = peer_closed;
    }

    /// Returns the next complete message, reading the socket only when the buffer holds none.
    pub fn read_message(&mut self) -> io::Result<ReadOutcome<'_>> {
        let (header, size) = loop {
            if let Some(discard) = &mut self.discard {
                let skipped = discard.left.min(self.end - self.start);
                self.start += skipped;
                discard.left -= skipped;
                if discard.left == 0 {
                    let (header, body_len) = (discard.header, discard.body_len);
                    self.discard = None;
                    drop(self.take_fds(self.offset_of(self.start)));
                    return Ok(ReadOutcome::Incoming(Incoming::Oversized {
                        header,
                        body_len,
                    }));
                }
            } else if let Ok((header, _)) = Header::read_from_prefix(self.buffered()) {
                if let Err(e) = check_header(&header) {
                    return Ok(ReadOutcome::Framing(e));
                }
                let len = body_len(&header);
                if len > MAX_BODY_SIZE {
                    self.start += HEADER_SIZE;
                    self.discard = Some(Discard {
                        header,
                        body_len: len,
                        left: len,
                    });
                    continue;
                }
                if self.buffered().len() >= HEADER_SIZE + len {
                    break (header, HEADER_SIZE + len);
                }
                self.make_room(HEADER_SIZE + len);
            }
            if !self.may_have_data {
                return Ok(ReadOutcome::WouldBlock);
            }
            if let Some(closed) = self.receive()? {
                return Ok(closed);
            }
        };
        let body = self.start + HEADER_SIZE..self.start + size;
        self.start += size;
        let (fds, fds_truncated) = self.take_fds(self.offset_of(self.start));
        let body = &self.inbox[body];
        Ok(ReadOutcome::Incoming(Incoming::Message {
            header,
            body,
            fds,
            fds_truncated,
        }))
    }

    fn buffered(&self) -> &[u8] {
        &self.inbox[self.start..self.end]
    }

    /// The stream offset of `inbox[index]`.
    fn offset_of(&self, index: usize) -> u64 {
        self.received - (self.end - index) as u64
    }

    /// Moves the buffered bytes to the front and grows the buffer to hold `size` of them.
    fn make_room(&mut self, size: usize) {
        self.inbox.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.start = 0;
        if self.inbox.len() < size {
            self.inbox.resize(size, 0);
        }
    }

    /// One recvmsg into the free end of the buffer; `Some` when the stream ended or the socket
    /// had nothing.
    fn receive(&mut self) -> io::Result<Option<ReadOutcome<'static>>> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            if self.inbox.len() > BUFFER_SIZE {
                // A large message has been taken: give its room back.
                self.inbox.truncate(BUFFER_SIZE);
                self.inbox.shrink_to_fit();
            }
        } else if self.start > 0 {
            self.make_room(0);
        }
        let mut fds = Vec::new();
        let room = &mut self.inbox[self.end..];
        let room_len = room.len();
        match recv_with_fds(self.stream.as_fd(), room, &mut fds) {
            Ok((0, _)) => Ok(Some(ReadOutcome::Closed {
                partial: self.discard.is_some() || self.start != self.end,
            })),
            Ok((n, truncated)) => {
                self.end += n;
                self.received += n as u64;
                let fds_came = !fds.is_empty() || truncated;
                if fds_came {
                    self.fd_batches.push_back(FdBatch {
                        last_byte: self.received - 1,
                        fds,
                        truncated,
                    });
                }
                // The kernel ends a read early after bytes that carried fds; only then, or
                // when the buffer filled, may more be waiting.
                self.may_have_data = self.read_to_end || fds_came || n == room_len;
                Ok(None)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.may_have_data = false;
                Ok(Some(ReadOutcome::WouldBlock))
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The fds that came with bytes before stream offset `end`: those of the message that ends
    /// there, as every earlier message took its own.
    fn take_fds(&mut self, end: u64) -> (Vec<OwnedFd>, bool) {
        let mut fds = Vec::new();
        let mut truncated = false;
        while self
            .fd_batches
            .front()
            .is_some_and(|batch| batch.last_byte < end)
        {
            let Some(batch) = self.fd_batches.pop_front() else {
                break;
            };
            if fds.is_empty() {
                fds = batch.fds;
            } else {
                fds.extend(batch.fds);
            }
            truncated |= batch.truncated;
        }
        (fds, truncated)
    }

    /// Queues a reply (header, body, and fds to send with its first byte); `flush` sends it.
    pub fn queue(&mut self, header: &[u8], body: &[u8], fds: Vec<OwnedFd>) {
        if !fds.is_empty() {
            self.outbox_fds.push_back((self.outbox.len(), fds));
        }
        self.outbox.extend_from_slice(header);
        self.outbox.extend_from_slice(body);
    }

    pub fn has_pending_output(&self) -> bool {
        self.sent < self.outbox.len()
    }

    /// Sends queued replies until none is left or the socket is full. Replies without fds go
    /// out together; a reply with fds starts a sendmsg of its own, so that the client receives
    /// them with its first byte.
    pub fn flush(&mut self) -> io::Result<()> {
        while self.sent < self.outbox.len() {
            let (until, fds): (usize, &[OwnedFd]) = match self.outbox_fds.front() {
                Some((at, fds)) if *at == self.sent => (
                    self.outbox_fds
                        .get(1)
                        .map_or(self.outbox.len(), |(next, _)| *next),
                    fds,
                ),
                Some((at, _)) => (*at, &[]),
                None => (self.outbox.len(), &[]),
            };
            let carries_fds = !fds.is_empty();
            match send_with_fds(self.stream.as_fd(), &self.outbox[self.sent..until], fds) {
                Ok(n) => {
                    self.sent += n;
                    if carries_fds {
                        self.outbox_fds.pop_front();
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        self.outbox.clear();
        self.outbox.shrink_to(BUFFER_SIZE);
        self.sent = 0;
        Ok(())
    }
}

/// Space for a control message of `fds` descriptors.
fn cmsg_space(fds: usize) -> usize {
    // SAFETY: CMSG_SPACE only computes a size.
    unsafe { libc::CMSG_SPACE((fds * std::mem::size_of::<RawFd>()) as u32) as usize }
}

/// One recvmsg; received fds are appended to `fds`. Returns the byte count and whether the
/// kernel dropped fds that did not fit.
fn recv_with_fds(
    socket: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> io::Result<(usize, bool)> {
    let mut control = [0u64; CONTROL_WORDS];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    // Room for exactly MAX_RECV_FDS, so that more is seen as truncation.
    msg.msg_controllen = cmsg_space(MAX_RECV_FDS).min(size_of_val(&control));
    // SAFETY: msg points at one iovec over `buf` and at `control`, both live and of the lengths
    // given; the kernel writes at most that much.
    let n = unsafe {
        libc::recvmsg(
            socket.as_raw_fd(),
            &mut msg,
            libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: msg was filled by recvmsg; CMSG_FIRSTHDR/NXTHDR stay within msg_controllen.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !cmsg.is_null() {
        // SAFETY: cmsg is non-null and points inside `control`, as CMSG_FIRSTHDR/NXTHDR guarantee.
        let header = unsafe { &*cmsg };
        if header.cmsg_level == libc::SOL_SOCKET && header.cmsg_type == libc::SCM_RIGHTS {
            // SAFETY: CMSG_LEN(0) is a pure size computation.
            let data_len = header.cmsg_len as usize - unsafe { libc::CMSG_LEN(0) } as usize;
            let count = data_len / std::mem::size_of::<RawFd>();
            // SAFETY: CMSG_DATA points at `count` fds inside the control buffer.
            let data = unsafe { libc::CMSG_DATA(cmsg) }.cast::<RawFd>();
            for i in 0..count {
                // SAFETY: i < count, within the cmsg data; read_unaligned as CMSG_DATA need not be
                // aligned for RawFd. Each fd is a new descriptor the kernel installed for us, so
                // taking ownership of it is sound.
                fds.push(unsafe { OwnedFd::from_raw_fd(data.add(i).read_unaligned()) });
            }
        }
        // SAFETY: msg and cmsg are valid as above.
        cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
    }
    Ok((n as usize, msg.msg_flags & libc::MSG_CTRUNC != 0))
}

/// One non-blocking sendmsg of `bytes`, with `fds` attached if there are any; returns how many
/// bytes went out.
pub fn send_with_fds(socket: BorrowedFd<'_>, bytes: &[u8], fds: &[OwnedFd]) -> io::Result<usize> {
    let mut control = [0u64; CONTROL_WORDS];
    if cmsg_space(fds.len()) > size_of_val(&control) {
        return Err(io::Error::from_raw_os_error(libc::E2BIG));
    }
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    // SAFETY: an all-zero msghdr is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = cmsg_space(fds.len());
        // SAFETY: the control buffer holds CMSG_SPACE(fds) bytes, so the first header and its
        // data fit; we write exactly fds.len() descriptors.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len =
                libc::CMSG_LEN((fds.len() * std::mem::size_of::<RawFd>()) as u32) as usize;
            let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
            for (i, fd) in fds.iter().enumerate() {
                data.add(i).write_unaligned(fd.as_raw_fd());
            }
        }
    }
    // SAFETY: msg points at `bytes` (only read) and at the control buffer built above.
    let n = unsafe {
        libc::sendmsg(
            socket.as_raw_fd(),
            &msg,
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use zerocopy::IntoBytes;

    fn pair() -> (Connection, std::os::unix::net::UnixStream) {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        (Connection::new(UnixStream::from_std(a)), b)
    }

    fn header(command: u16, size: u32) -> Vec<u8> {
        Header {
            message_id: 1.into(),
            command: command.into(),
            message_size: size.into(),
            ..Default::default()
        }
        .as_bytes()
        .to_vec()
    }

    #[test]
    fn message_split_across_writes_is_reassembled() {
        let (mut conn, mut peer) = pair();
        let mut bytes = header(9, 20);
        bytes.extend_from_slice(&[1, 2, 3, 4]);
        peer.write_all(&bytes[..10]).unwrap();
        assert!(matches!(
            conn.read_message().unwrap(),
            ReadOutcome::WouldBlock
        ));
        peer.write_all(&bytes[10..]).unwrap();
        conn.readable(false);
        match conn.read_message().unwrap() {
            ReadOutcome::Incoming(Incoming::Message { header, body, .. }) => {
                assert_eq!(header.command, 9);
                assert_eq!(body, [1, 2, 3, 4]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn fds_arrive_with_their_message() {
        let (mut conn, peer) = pair();
        let file = std::fs::File::open("/dev/null").unwrap();
        let fd = OwnedFd::from(file);
        send_with_fds(peer.as_fd(), &header(13, 16), &[fd]).unwrap();
        match conn.read_message().unwrap() {
            ReadOutcome::Incoming(Incoming::Message {
                fds, fds_truncated, ..
            }) => {
                assert_eq!(fds.len(), 1);
                assert!(!fds_truncated);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn oversized_body_is_skipped() {
        let (mut conn, mut peer) = pair();
        let len = MAX_BODY_SIZE + 1;
        let writer = std::thread::spawn(move || {
            peer.write_all(&header(10, (HEADER_SIZE + len) as u32))
                .unwrap();
            peer.write_all(&vec![0u8; len]).unwrap();
            peer.write_all(&header(13, 16)).unwrap();
            peer
        });
        let mut outcomes = vec![];
        while outcomes.len() < 2 {
            match conn.read_message().unwrap() {
                ReadOutcome::WouldBlock => {
                    std::thread::yield_now();
                    conn.readable(false);
                }
                ReadOutcome::Incoming(Incoming::Oversized { body_len, .. }) => {
                    outcomes.push((None, body_len))
                }
                ReadOutcome::Incoming(Incoming::Message { header, body, .. }) => {
                    outcomes.push((Some(header.command.get()), body.len()))
                }
                other => panic!("{other:?}"),
            }
        }
        writer.join().unwrap();
        assert_eq!(outcomes, [(None, len), (Some(13), 0)]);
    }

    /// Reads `count` messages, waiting for the socket as the server's loop would.
    fn read_all(conn: &mut Connection, count: usize) -> Vec<(u16, Vec<u8>, usize)> {
        let mut messages = Vec::new();
        while messages.len() < count {
            match conn.read_message().unwrap() {
                ReadOutcome::WouldBlock => {
                    std::thread::yield_now();
                    conn.readable(false);
                }
                ReadOutcome::Incoming(Incoming::Message {
                    header, body, fds, ..
                }) => messages.push((header.command.get(), body.to_vec(), fds.len())),
                other => panic!("{other:?}"),
            }
        }
        messages
    }

    #[test]
    fn a_burst_is_served_from_one_read_and_a_short_read_means_the_socket_is_empty() {
        let (mut conn, mut peer) = pair();
        let mut burst = Vec::new();
        for command in [10u16, 11, 12] {
            burst.extend_from_slice(&header(command, 20));
            burst.extend_from_slice(&[command as u8; 4]);
        }
        peer.write_all(&burst).unwrap();
        let messages = read_all(&mut conn, 3);
        assert_eq!(messages[2], (12, vec![12; 4], 0));
        // The read that took the burst was short: without a readiness event the socket is not
        // asked again, so a message sent since waits for the next one.
        peer.write_all(&header(13, 16)).unwrap();
        assert!(matches!(
            conn.read_message().unwrap(),
            ReadOutcome::WouldBlock
        ));
        conn.readable(false);
        assert_eq!(read_all(&mut conn, 1), [(13, vec![], 0)]);
    }

    #[test]
    fn fds_in_a_burst_go_to_the_message_that_carried_them() {
        let (mut conn, mut peer) = pair();
        peer.write_all(&header(10, 16)).unwrap();
        let fds = [
            OwnedFd::from(std::fs::File::open("/dev/null").unwrap()),
            OwnedFd::from(std::fs::File::open("/dev/null").unwrap()),
        ];
        let mut with_fds = header(11, 20);
        with_fds.extend_from_slice(&[1, 2, 3, 4]);
        send_with_fds(peer.as_fd(), &with_fds, &fds).unwrap();
        peer.write_all(&header(12, 16)).unwrap();
        send_with_fds(peer.as_fd(), &header(13, 16), &fds[..1]).unwrap();
        let fds_of: Vec<_> = read_all(&mut conn, 4)
            .into_iter()
            .map(|(command, _, fds)| (command, fds))
            .collect();
        assert_eq!(fds_of, [(10, 0), (11, 2), (12, 0), (13, 1)]);
    }

    #[test]
    fn a_message_larger_than_the_buffer_is_read_whole() {
        let (mut conn, mut peer) = pair();
        let len = 3 * BUFFER_SIZE + 5;
        let writer = std::thread::spawn(move || {
            peer.write_all(&header(10, (HEADER_SIZE + len) as u32))
                .unwrap();
            peer.write_all(&vec![7u8; len]).unwrap();
            peer.write_all(&header(11, 16)).unwrap();
            peer
        });
        let messages = read_all(&mut conn, 2);
        writer.join().unwrap();
        assert_eq!(messages[0].1, vec![7u8; len]);
        assert_eq!(messages[1], (11, vec![], 0));
    }

    #[test]
    fn close_mid_header_is_partial() {
        let (mut conn, mut peer) = pair();
        peer.write_all(&[1, 2, 3]).unwrap();
        drop(peer);
        conn.readable(true);
        assert!(matches!(
            conn.read_message().unwrap(),
            ReadOutcome::Closed { partial: true }
        ));
    }

    #[test]
    fn garbled_header_is_a_framing_error() {
        let (mut conn, mut peer) = pair();
        peer.write_all(&header(1, 3)).unwrap();
        assert!(matches!(
            conn.read_message().unwrap(),
            ReadOutcome::Framing(FramingError::TooShort(3))
        ));
    }
}
