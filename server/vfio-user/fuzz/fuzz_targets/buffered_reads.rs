//! The connection's buffered reads against a byte stream the input writes into a real socket in
//! arbitrary pieces, some carrying an fd, with reads interleaved. What the connection returns
//! is checked against a plain framing of everything written:
//! - every message and oversized message, in order, with its header and body;
//! - a framing error exactly where the stream's next header is garbled (the server then
//!   disconnects, and so does this target);
//! - the fds of a piece only with a message that overlaps the bytes that piece carried;
//! - `WouldBlock` only once the socket holds nothing more (readiness is edge-triggered, so
//!   bytes left in it would never be read);
//! - at the end of the stream, `Closed`, partial exactly when bytes of an unfinished message
//!   are left.
//!
//! Input: records of [op][length: u16 LE][bytes]. `op % 6`: 0 writes the bytes; 1 writes them
//! with an fd; 2 writes them as one message (a 16-byte header with command `op / 6` and the
//! right size before them); 3 the same with an fd; 4 reads what the connection has; 5 writes
//! `length % 1100` KiB of zeros, enough to cross the largest body the server takes.

#![no_main]

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;

use libfuzzer_sys::fuzz_target;
use vfio_user_server::{
    send_with_fds, Connection, Header, Incoming, ReadOutcome, HEADER_SIZE, MAX_BODY_SIZE,
};

/// Everything written so far, and the pieces that carried fds.
struct Written {
    bytes: Vec<u8>,
    /// (inode of the fd, range of the stream its sendmsg carried)
    fd_pieces: Vec<(u64, std::ops::Range<usize>)>,
}

/// The reader's side: the connection and where the next message starts in the stream.
struct Reader {
    connection: Connection,
    /// The connection's socket, to ask the kernel what is still queued in it.
    socket: OwnedFd,
    next: usize,
    /// A framing error ended the stream.
    garbled: bool,
}

impl Reader {
    /// Takes every message the connection returns until it would block, checking each against
    /// the stream.
    fn drain(&mut self, written: &Written) {
        self.connection.readable(false);
        while !self.garbled {
            match self.connection.read_message() {
                Ok(ReadOutcome::WouldBlock) => {
                    // Readiness is edge-triggered: bytes left behind now would wait forever.
                    assert_eq!(
                        queued(&self.socket),
                        0,
                        "would block with bytes in the socket"
                    );
                    return;
                }
                Ok(outcome) => self.next = check(outcome, written, self.next, &mut self.garbled),
                Err(e) => panic!("read failed: {e}"),
            }
        }
    }
}

/// The header the stream holds at `at`, if all of it is there.
fn header_at(stream: &[u8], at: usize) -> Option<(u32, u32)> {
    let bytes = stream.get(at..at + HEADER_SIZE)?;
    let le32 = |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    Some((le32(4), le32(8)))
}

fn same_header(header: &Header, stream: &[u8], at: usize) {
    let id = u16::from_le_bytes([stream[at], stream[at + 1]]);
    let command = u16::from_le_bytes([stream[at + 2], stream[at + 3]]);
    assert_eq!(header.message_id.get(), id);
    assert_eq!(header.command.get(), command);
}

/// Checks one outcome against the stream at `next`; returns where the following message starts.
fn check(outcome: ReadOutcome<'_>, written: &Written, next: usize, garbled: &mut bool) -> usize {
    let stream = &written.bytes;
    let framed = header_at(stream, next);
    match outcome {
        ReadOutcome::Incoming(Incoming::Message {
            header,
            body,
            fds,
            fds_truncated,
        }) => {
            let (size, flags) = framed.expect("a message the stream does not hold yet");
            let size = size as usize;
            assert!(size >= HEADER_SIZE && flags & 0xf == 0 && size - HEADER_SIZE <= MAX_BODY_SIZE);
            same_header(&header, stream, next);
            assert_eq!(header.message_size.get() as usize, size);
            assert_eq!(body, &stream[next + HEADER_SIZE..next + size]);
            assert!(!fds_truncated);
            for fd in fds {
                let inode = File::from(fd).metadata().map(|m| m.ino()).ok();
                let piece = written
                    .fd_pieces
                    .iter()
                    .find(|(ino, _)| Some(*ino) == inode)
                    .map(|(_, range)| range.clone())
                    .expect("an fd this target did not send");
                assert!(
                    piece.start < next + size && next < piece.end,
                    "the fd of bytes {piece:?} went to the message at {next}..{}",
                    next + size
                );
            }
            next + size
        }
        ReadOutcome::Incoming(Incoming::Oversized { header, body_len }) => {
            let (size, flags) = framed.expect("an oversized message the stream does not hold");
            assert!(size as usize >= HEADER_SIZE && flags & 0xf == 0);
            assert_eq!(body_len, size as usize - HEADER_SIZE);
            assert!(body_len > MAX_BODY_SIZE);
            assert!(next + size as usize <= stream.len());
            same_header(&header, stream, next);
            next + size as usize
        }
        ReadOutcome::Framing(_) => {
            let (size, flags) = framed.expect("a framing error before a whole header");
            assert!((size as usize) < HEADER_SIZE || flags & 0xf != 0);
            *garbled = true;
            next
        }
        ReadOutcome::Closed { partial } => {
            assert_eq!(partial, next < stream.len());
            *garbled = true;
            next
        }
        ReadOutcome::WouldBlock => next,
    }
}

/// Bytes waiting in `socket`'s receive queue.
fn queued(socket: &OwnedFd) -> libc::c_int {
    let mut bytes: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through the pointer, which points at `bytes`.
    let result = unsafe { libc::ioctl(socket.as_raw_fd(), libc::FIONREAD, &mut bytes) };
    assert_eq!(result, 0, "FIONREAD failed");
    bytes
}

fn memfd() -> Option<OwnedFd> {
    // SAFETY: the name is a NUL-terminated string; memfd_create takes no other pointer.
    let fd = unsafe { libc::memfd_create(c"fuzz-piece".as_ptr(), libc::MFD_CLOEXEC) };
    // SAFETY: memfd_create just returned this fd, which nothing else owns.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Writes `bytes` as the client would, with `fd` on the first sendmsg; reads whenever the
/// socket is full, as the server's loop would.
fn write(
    peer: &UnixStream,
    reader: &mut Reader,
    written: &mut Written,
    bytes: &[u8],
    fd: Option<OwnedFd>,
) {
    let mut fd = fd;
    let mut sent = 0;
    while sent < bytes.len() && !reader.garbled {
        let fds: Vec<OwnedFd> = fd.iter().filter_map(|fd| fd.try_clone().ok()).collect();
        match send_with_fds(peer.as_fd(), &bytes[sent..], &fds) {
            Ok(n) => {
                let start = written.bytes.len();
                written.bytes.extend_from_slice(&bytes[sent..sent + n]);
                if let Some(fd) = fd.take() {
                    let inode = File::from(fd).metadata().map(|m| m.ino()).unwrap_or(0);
                    written.fd_pieces.push((inode, start..start + n));
                }
                sent += n;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => reader.drain(written),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => panic!("send failed: {e}"),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok((server_end, peer)) = UnixStream::pair() else {
        return;
    };
    if server_end.set_nonblocking(true).is_err() || peer.set_nonblocking(true).is_err() {
        return;
    }
    let Ok(socket) = server_end.as_fd().try_clone_to_owned() else {
        return;
    };
    let mut reader = Reader {
        connection: Connection::new(mio::net::UnixStream::from_std(server_end)),
        socket,
        next: 0,
        garbled: false,
    };
    let mut written = Written {
        bytes: Vec::new(),
        fd_pieces: Vec::new(),
    };
    let mut records = data;
    while let [op, lo, hi, rest @ ..] = records {
        if reader.garbled {
            break;
        }
        let len = usize::from(u16::from_le_bytes([*lo, *hi]));
        let (bytes, rest) = rest.split_at(len.min(rest.len()));
        records = rest;
        let with_fd = || memfd();
        match op % 6 {
            0 => write(&peer, &mut reader, &mut written, bytes, None),
            1 => write(&peer, &mut reader, &mut written, bytes, with_fd()),
            2 | 3 => {
                let header = [
                    &[0x34, 0x12][..],
                    &u16::from(op / 6).to_le_bytes(),
                    &((HEADER_SIZE + bytes.len()) as u32).to_le_bytes(),
                    &[0; 8],
                ]
                .concat();
                let fd = if op % 6 == 3 { with_fd() } else { None };
                write(
                    &peer,
                    &mut reader,
                    &mut written,
                    &[&header[..], bytes].concat(),
                    fd,
                );
            }
            4 => reader.drain(&written),
            _ => {
                let zeros = vec![0u8; (len % 1100) * 1024];
                write(&peer, &mut reader, &mut written, &zeros, None);
            }
        }
    }
    reader.drain(&written);
    drop(peer);
    reader.connection.readable(true);
    while !reader.garbled {
        match reader.connection.read_message() {
            Ok(ReadOutcome::WouldBlock) => panic!("a closed stream would block"),
            Ok(outcome) => reader.next = check(outcome, &written, reader.next, &mut reader.garbled),
            Err(e) => panic!("read failed: {e}"),
        }
    }
});
