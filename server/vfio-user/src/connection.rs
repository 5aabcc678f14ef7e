//! One client's socket: cutting the byte stream into messages, receiving and sending fds with
//! SCM_RIGHTS, and queueing replies the socket cannot take yet.
//!
//! Messages are read one at a time (header, then exactly its body), so the fds a recvmsg returns
//! always belong to the message being read: the kernel attaches them to the first bytes of the
//! sendmsg that carried them.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use mio::net::UnixStream;

use crate::message::{body_len, check_header, FramingError};
use crate::protocol::{Header, HEADER_SIZE, MAX_BODY_SIZE, MAX_MSG_FDS};

/// Room for more fds than we accept, so that an excess is seen (and refused) rather than
/// silently truncated by the kernel.
pub const MAX_RECV_FDS: usize = 4 * MAX_MSG_FDS;
/// Chunk used to skip the body of an oversized message.
const DISCARD_CHUNK: usize = 64 * 1024;

/// A complete message read from the socket.
#[derive(Debug)]
pub enum Incoming {
    Message {
        header: Header,
        body: Vec<u8>,
        fds: Vec<OwnedFd>,
        fds_truncated: bool,
    },
    /// A body larger than `MAX_BODY_SIZE`: skipped unread so the stream stays in sync.
    Oversized { header: Header, body_len: usize },
}

#[derive(Debug)]
pub enum ReadOutcome {
    Incoming(Incoming),
    /// Nothing more to read for now.
    WouldBlock,
    /// The peer closed the socket; `partial` if it did so in the middle of a message.
    Closed {
        partial: bool,
    },
    Framing(FramingError),
}

enum ReadState {
    Header {
        bytes: [u8; HEADER_SIZE],
        filled: usize,
    },
    Body {
        header: Header,
        body: Vec<u8>,
        filled: usize,
    },
    Discard {
        header: Header,
        body_len: usize,
        left: usize,
    },
}

impl ReadState {
    fn start() -> ReadState {
        ReadState::Header {
            bytes: [0; HEADER_SIZE],
            filled: 0,
        }
    }

    fn in_message(&self) -> bool {
        !matches!(self, ReadState::Header { filled: 0, .. })
    }
}

struct Outgoing {
    bytes: Vec<u8>,
    sent: usize,
    /// Sent with the first byte of `bytes`, then closed.
    fds: Vec<OwnedFd>,
}

pub struct Connection {
    stream: UnixStream,
    state: ReadState,
    fds: Vec<OwnedFd>,
    fds_truncated: bool,
    out: VecDeque<Outgoing>,
    /// Where the bytes of an oversized body go; made on first use, as such bodies are rare
    /// (zeroing it on every read showed in profiles: a read per guest notify).
    discard: Vec<u8>,
}

impl Connection {
    pub fn new(stream: UnixStream) -> Connection {
        Connection {
            stream,
            state: ReadState::start(),
            fds: Vec::new(),
            fds_truncated: false,
            out: VecDeque::new(),
            discard: Vec::new(),
        }
    }

    pub fn stream_mut(&mut self) -> &mut UnixStream {
        &mut self.stream
    }

    /// Reads until one message is complete, the socket has no more data, or the stream ends.
    pub fn read_message(&mut self) -> io::Result<ReadOutcome> {
        loop {
            let buf: &mut [u8] = match &mut self.state {
                ReadState::Header { bytes, filled } => &mut bytes[*filled..],
                ReadState::Body { body, filled, .. } => &mut body[*filled..],
                ReadState::Discard { left, .. } => {
                    self.discard.resize(DISCARD_CHUNK, 0);
                    &mut self.discard[..(*left).min(DISCARD_CHUNK)]
                }
            };
            let n = if buf.is_empty() {
                0
            } else {
                match recv_with_fds(self.stream.as_fd(), buf, &mut self.fds) {
                    Ok((0, _)) => {
                        return Ok(ReadOutcome::Closed {
                            partial: self.state.in_message(),
                        })
                    }
                    Ok((n, truncated)) => {
                        self.fds_truncated |= truncated;
                        n
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        return Ok(ReadOutcome::WouldBlock)
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            };
            if let Some(outcome) = self.advance(n) {
                return Ok(outcome);
            }
        }
    }

    /// Accounts for `n` more bytes of the current state; returns a finished outcome, if any.
    fn advance(&mut self, n: usize) -> Option<ReadOutcome> {
        match &mut self.state {
            ReadState::Header { bytes, filled } => {
                *filled += n;
                if *filled < HEADER_SIZE {
                    return None;
                }
                let header: Header = zerocopy::transmute!(*bytes);
                if let Err(e) = check_header(&header) {
                    return Some(ReadOutcome::Framing(e));
                }
                let len = body_len(&header);
                self.state = if len > MAX_BODY_SIZE {
                    ReadState::Discard {
                        header,
                        body_len: len,
                        left: len,
                    }
                } else {
                    ReadState::Body {
                        header,
                        body: vec![0; len],
                        filled: 0,
                    }
                };
                // A header-only message is complete right away.
                self.finish_if_complete()
            }
            ReadState::Body { filled, .. } => {
                *filled += n;
                self.finish_if_complete()
            }
            ReadState::Discard { left, .. } => {
                *left -= n;
                self.finish_if_complete()
            }
        }
    }

    fn finish_if_complete(&mut self) -> Option<ReadOutcome> {
        let complete = match &self.state {
            ReadState::Header { .. } => false,
            ReadState::Body { body, filled, .. } => *filled == body.len(),
            ReadState::Discard { left, .. } => *left == 0,
        };
        if !complete {
            return None;
        }
        let fds = std::mem::take(&mut self.fds);
        let fds_truncated = std::mem::replace(&mut self.fds_truncated, false);
        Some(ReadOutcome::Incoming(
            match std::mem::replace(&mut self.state, ReadState::start()) {
                ReadState::Body { header, body, .. } => Incoming::Message {
                    header,
                    body,
                    fds,
                    fds_truncated,
                },
                ReadState::Discard {
                    header, body_len, ..
                } => Incoming::Oversized { header, body_len },
                ReadState::Header { .. } => return None,
            },
        ))
    }

    /// Queues a message; `flush` sends it.
    pub fn queue(&mut self, bytes: Vec<u8>, fds: Vec<OwnedFd>) {
        self.out.push_back(Outgoing {
            bytes,
            sent: 0,
            fds,
        });
    }

    pub fn has_pending_output(&self) -> bool {
        !self.out.is_empty()
    }

    /// Sends queued messages until the queue is empty or the socket is full.
    pub fn flush(&mut self) -> io::Result<()> {
        while let Some(message) = self.out.front_mut() {
            let socket = self.stream.as_fd();
            match send_with_fds(socket, &message.bytes[message.sent..], &message.fds) {
                Ok(n) => {
                    message.sent += n;
                    message.fds.clear();
                    if message.sent == message.bytes.len() {
                        self.out.pop_front();
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
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
    let mut control = vec![0u64; cmsg_space(MAX_RECV_FDS).div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = control.len() * 8;
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
    let mut control = vec![0u64; cmsg_space(fds.len()).div_ceil(8)];
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
                ReadOutcome::WouldBlock => std::thread::yield_now(),
                ReadOutcome::Incoming(i) => outcomes.push(i),
                other => panic!("{other:?}"),
            }
        }
        writer.join().unwrap();
        assert!(matches!(outcomes[0], Incoming::Oversized { body_len, .. } if body_len == len));
        assert!(matches!(&outcomes[1], Incoming::Message { header, .. } if header.command == 13));
    }

    #[test]
    fn close_mid_header_is_partial() {
        let (mut conn, mut peer) = pair();
        peer.write_all(&[1, 2, 3]).unwrap();
        drop(peer);
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
