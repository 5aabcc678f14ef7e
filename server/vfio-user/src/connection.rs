//! One client's connection: the byte stream cut into messages, each message decoded into a
//! `ClientRequest`, fds received and sent with SCM_RIGHTS, and replies queued until the socket
//! takes them.
//!
//! Reads are buffered: one recvmsg takes whatever the socket holds (a burst of posted notify
//! writes is many messages) into a buffer kept for the connection's life, and a read that
//! returned less than it had room for, and no fds, showed the socket empty: the next read waits
//! for the next readiness event instead of asking for EAGAIN. Fds still reach the message they
//! came with. A client sends each message with one sendmsg, fds attached to its first byte, and
//! the kernel ends a read of a unix stream socket right after the bytes that carried fds; so the
//! fds a recvmsg returns belong to the message that holds the last byte it returned.
//!
//! Decoding checks every length before anything is read or allocated; the fuzz target calls
//! `decode_message` directly.

use std::collections::VecDeque;
use std::io;
use std::mem::{size_of, MaybeUninit};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use mio::net::UnixStream;
use zerocopy::{FromBytes, Immutable, KnownLayout};

use crate::device::IrqAction;
use crate::irq::{decode_set_irqs, IrqError};
use crate::protocol::{
    DmaMap, DmaUnmap, Header, InfoHead, RegionAccess, RegionInfoHead, SetIrqs, Version,
    VfioUserCommand, FLAG_TYPE_COMMAND, FLAG_TYPE_MASK, HEADER_SIZE, MAX_BODY_SIZE,
    MAX_DATA_XFER_SIZE, MAX_MSG_FDS, U32,
};

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

    /// Whether `read_message` would find nothing without asking the socket: no header buffered,
    /// and the last read showed the socket empty. Inlined into the serve loop, which asks at the
    /// end of every burst.
    #[inline]
    pub fn is_drained(&self) -> bool {
        !self.may_have_data && self.discard.is_none() && self.end - self.start < HEADER_SIZE
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
    #[inline]
    fn take_fds(&mut self, end: u64) -> (Vec<OwnedFd>, bool) {
        if self.fd_batches.is_empty() {
            return (Vec::new(), false);
        }
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

    #[inline]
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
    // Left uninitialised: only the kernel writes it, and only the `msg_controllen` bytes it
    // reports are read back. Zeroing it would cost more than the rest of a notify's decoding.
    let mut control = MaybeUninit::<[u64; CONTROL_WORDS]>::uninit();
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
    msg.msg_controllen = cmsg_space(MAX_RECV_FDS).min(size_of::<[u64; CONTROL_WORDS]>());
    // Called through `syscall`, which is no cancellation point: glibc's `recvmsg` wrapper would
    // cost a socket kick a tenth of its instructions on the main loop.
    // SAFETY: msg points at one iovec over `buf` and at `control`, both live and of the lengths
    // given; the kernel writes at most that much.
    let n = unsafe {
        libc::syscall(
            libc::SYS_recvmsg,
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

/// What the client says it can take, from its VERSION capabilities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientCaps {
    pub max_msg_fds: u32,
    pub max_data_xfer_size: u32,
}

impl Default for ClientCaps {
    /// The protocol's defaults for a client that names no capability.
    fn default() -> Self {
        ClientCaps {
            max_msg_fds: 1,
            max_data_xfer_size: MAX_DATA_XFER_SIZE,
        }
    }
}

#[derive(Debug)]
pub enum ClientRequest<'a> {
    Version {
        major: u16,
        minor: u16,
        caps: ClientCaps,
    },
    DmaMap {
        map: DmaMap,
        fd: Option<OwnedFd>,
    },
    DmaUnmap(DmaUnmap),
    DeviceGetInfo {
        argsz: u32,
    },
    DeviceGetRegionInfo {
        argsz: u32,
        index: u32,
    },
    DeviceGetRegionIoFds {
        argsz: u32,
        index: u32,
    },
    DeviceGetIrqInfo {
        argsz: u32,
        index: u32,
    },
    DeviceSetIrqs {
        index: u32,
        action: IrqAction,
    },
    RegionRead(RegionAccess),
    RegionWrite {
        access: RegionAccess,
        data: &'a [u8],
    },
    DeviceReset,
}

/// A header that makes the stream unusable: the connection ends.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FramingError {
    #[error("message size {0} is smaller than the header")]
    TooShort(u32),
    #[error("flags {0:#x} do not mark a command")]
    NotACommand(u32),
}

/// Why the JSON capabilities of VERSION were refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CapabilitiesError {
    #[error("version data is not NUL-terminated")]
    NotTerminated,
    #[error("not valid JSON (line {line}, column {column})")]
    Json { line: usize, column: usize },
    #[error("not a JSON object")]
    NotAnObject,
    #[error("capabilities is not an object")]
    CapabilitiesNotAnObject,
    #[error("{0} is not a 32-bit number")]
    NotU32(&'static str),
}

/// A well-framed message the server refuses: it gets an error reply and the stream stays in sync.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("unknown command {0}")]
    UnknownCommand(u16),
    #[error("body of {got} bytes, {command:?} needs {need}")]
    BadLength {
        command: VfioUserCommand,
        got: usize,
        need: usize,
    },
    #[error("body of {0} bytes exceeds the {MAX_BODY_SIZE}-byte limit")]
    TooLarge(usize),
    #[error("{got} fds, at most {allowed} allowed")]
    TooManyFds { got: usize, allowed: usize },
    #[error("argsz {argsz} is below the {need}-byte reply")]
    ArgszTooSmall { argsz: u32, need: usize },
    #[error("count {0} exceeds max_data_xfer_size")]
    CountTooLarge(u32),
    #[error("protocol major version {0} not supported")]
    Version(u16),
    #[error("capabilities: {0}")]
    Capabilities(#[from] CapabilitiesError),
    #[error("SET_IRQS: {0}")]
    Irq(#[from] IrqError),
}

impl DecodeError {
    pub fn errno(&self) -> i32 {
        match self {
            DecodeError::UnknownCommand(_) => libc::ENOSYS,
            DecodeError::TooLarge(_) | DecodeError::CountTooLarge(_) => libc::E2BIG,
            DecodeError::Version(_) => libc::ENOTSUP,
            DecodeError::Irq(e) => e.errno(),
            _ => libc::EINVAL,
        }
    }
}

/// Checks a header before its body is read.
pub fn check_header(header: &Header) -> Result<(), FramingError> {
    let (size, flags) = (header.message_size.get(), header.flags.get());
    if (size as usize) < HEADER_SIZE {
        return Err(FramingError::TooShort(size));
    }
    if flags & FLAG_TYPE_MASK != FLAG_TYPE_COMMAND {
        return Err(FramingError::NotACommand(flags));
    }
    Ok(())
}

/// Length of the body that follows `header`, once `check_header` accepted it.
pub fn body_len(header: &Header) -> usize {
    (header.message_size.get() as usize).saturating_sub(HEADER_SIZE)
}

/// How a whole message decodes: a framing error ends the connection; a decode error is replied to.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    #[error("header shorter than {HEADER_SIZE} bytes")]
    ShortHeader,
    #[error(transparent)]
    Framing(#[from] FramingError),
    #[error("message size {declared} but {got} bytes present")]
    ShortBody { declared: u32, got: usize },
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// Decodes one complete message from `bytes` (header and body, nothing after).
pub fn decode_message(
    bytes: &[u8],
    fds: Vec<OwnedFd>,
) -> Result<(Header, ClientRequest<'_>), MessageError> {
    let (header, body) = Header::read_from_prefix(bytes).map_err(|_| MessageError::ShortHeader)?;
    check_header(&header)?;
    if body.len() != body_len(&header) {
        return Err(MessageError::ShortBody {
            declared: header.message_size.get(),
            got: body.len(),
        });
    }
    let request = decode_request(&header, body, fds)?;
    Ok((header, request))
}

/// The fixed part `T` that starts `body`.
fn fixed<T: FromBytes + KnownLayout + Immutable>(
    command: VfioUserCommand,
    body: &[u8],
) -> Result<T, DecodeError> {
    T::read_from_prefix(body)
        .map(|(fixed, _)| fixed)
        .map_err(|_| DecodeError::BadLength {
            command,
            got: body.len(),
            need: size_of::<T>(),
        })
}

fn no_fds(fds: &[OwnedFd]) -> Result<(), DecodeError> {
    match fds.len() {
        0 => Ok(()),
        got => Err(DecodeError::TooManyFds { got, allowed: 0 }),
    }
}

/// `argsz` of a request whose reply needs at least `T`.
fn argsz_at_least<T>(argsz: U32) -> Result<u32, DecodeError> {
    let (argsz, need) = (argsz.get(), size_of::<T>());
    if (argsz as usize) < need {
        return Err(DecodeError::ArgszTooSmall { argsz, need });
    }
    Ok(argsz)
}

/// Decodes the body of a message whose header passed `check_header`. Fds not kept by the request
/// are closed when this returns.
pub fn decode_request<'a>(
    header: &Header,
    body: &'a [u8],
    fds: Vec<OwnedFd>,
) -> Result<ClientRequest<'a>, DecodeError> {
    let command = header.command.get();
    let command = VfioUserCommand::from_u16(command).ok_or(DecodeError::UnknownCommand(command))?;
    if body.len() > MAX_BODY_SIZE {
        return Err(DecodeError::TooLarge(body.len()));
    }
    if fds.len() > MAX_MSG_FDS {
        return Err(DecodeError::TooManyFds {
            got: fds.len(),
            allowed: MAX_MSG_FDS,
        });
    }
    match command {
        VfioUserCommand::Version => {
            no_fds(&fds)?;
            decode_version(body)
        }
        VfioUserCommand::DmaMap => {
            let map = fixed::<DmaMap>(command, body)?;
            if fds.len() > 1 {
                return Err(DecodeError::TooManyFds {
                    got: fds.len(),
                    allowed: 1,
                });
            }
            Ok(ClientRequest::DmaMap {
                map,
                fd: fds.into_iter().next(),
            })
        }
        VfioUserCommand::DmaUnmap => {
            no_fds(&fds)?;
            let unmap = fixed::<DmaUnmap>(command, body)?;
            argsz_at_least::<DmaUnmap>(unmap.argsz)?;
            Ok(ClientRequest::DmaUnmap(unmap))
        }
        VfioUserCommand::DeviceGetInfo
        | VfioUserCommand::DeviceGetRegionIoFds
        | VfioUserCommand::DeviceGetIrqInfo => {
            no_fds(&fds)?;
            let head = fixed::<InfoHead>(command, body)?;
            let argsz = argsz_at_least::<InfoHead>(head.argsz)?;
            let index = head.index.get();
            Ok(match command {
                VfioUserCommand::DeviceGetInfo => ClientRequest::DeviceGetInfo { argsz },
                VfioUserCommand::DeviceGetRegionIoFds => {
                    ClientRequest::DeviceGetRegionIoFds { argsz, index }
                }
                _ => ClientRequest::DeviceGetIrqInfo { argsz, index },
            })
        }
        VfioUserCommand::DeviceGetRegionInfo => {
            no_fds(&fds)?;
            let head = fixed::<RegionInfoHead>(command, body)?;
            let argsz = argsz_at_least::<RegionInfoHead>(head.argsz)?;
            Ok(ClientRequest::DeviceGetRegionInfo {
                argsz,
                index: head.index.get(),
            })
        }
        VfioUserCommand::DeviceSetIrqs => {
            let args = fixed::<SetIrqs>(command, body)?;
            let action = decode_set_irqs(&args, &body[size_of::<SetIrqs>()..], fds)?;
            Ok(ClientRequest::DeviceSetIrqs {
                index: args.index.get(),
                action,
            })
        }
        VfioUserCommand::RegionRead => {
            no_fds(&fds)?;
            let access = fixed::<RegionAccess>(command, body)?;
            if access.count.get() > MAX_DATA_XFER_SIZE {
                return Err(DecodeError::CountTooLarge(access.count.get()));
            }
            Ok(ClientRequest::RegionRead(access))
        }
        VfioUserCommand::RegionWrite => {
            no_fds(&fds)?;
            let access = fixed::<RegionAccess>(command, body)?;
            let count = access.count.get();
            if count > MAX_DATA_XFER_SIZE {
                return Err(DecodeError::CountTooLarge(count));
            }
            let data = &body[size_of::<RegionAccess>()..];
            if data.len() != count as usize {
                return Err(DecodeError::BadLength {
                    command,
                    got: body.len(),
                    need: size_of::<RegionAccess>() + count as usize,
                });
            }
            Ok(ClientRequest::RegionWrite { access, data })
        }
        VfioUserCommand::DeviceReset => {
            no_fds(&fds)?;
            Ok(ClientRequest::DeviceReset)
        }
    }
}

fn decode_version(body: &[u8]) -> Result<ClientRequest<'static>, DecodeError> {
    let (version, json) = Version::read_from_prefix(body).map_err(|_| DecodeError::BadLength {
        command: VfioUserCommand::Version,
        got: body.len(),
        need: size_of::<Version>(),
    })?;
    let (major, minor) = (version.major.get(), version.minor.get());
    if major != 0 {
        return Err(DecodeError::Version(major));
    }
    let caps = match json {
        [] => ClientCaps::default(),
        [json @ .., 0] => parse_capabilities(json)?,
        _ => return Err(CapabilitiesError::NotTerminated.into()),
    };
    Ok(ClientRequest::Version { major, minor, caps })
}

fn parse_capabilities(json: &[u8]) -> Result<ClientCaps, CapabilitiesError> {
    let value: serde_json::Value =
        serde_json::from_slice(json).map_err(|e| CapabilitiesError::Json {
            line: e.line(),
            column: e.column(),
        })?;
    let object = value.as_object().ok_or(CapabilitiesError::NotAnObject)?;
    let mut caps = ClientCaps::default();
    let Some(capabilities) = object.get("capabilities") else {
        return Ok(caps);
    };
    let capabilities = capabilities
        .as_object()
        .ok_or(CapabilitiesError::CapabilitiesNotAnObject)?;
    let number = |name: &'static str| -> Result<Option<u32>, CapabilitiesError> {
        capabilities
            .get(name)
            .map(|v| {
                v.as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or(CapabilitiesError::NotU32(name))
            })
            .transpose()
    };
    if let Some(n) = number("max_msg_fds")? {
        caps.max_msg_fds = n;
    }
    if let Some(n) = number("max_data_xfer_size")? {
        caps.max_data_xfer_size = n;
    }
    Ok(caps)
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

    fn message(command: u16, flags: u32, body: &[u8]) -> Vec<u8> {
        let header = Header {
            message_id: 7.into(),
            command: command.into(),
            message_size: ((HEADER_SIZE + body.len()) as u32).into(),
            flags: flags.into(),
            error: 0.into(),
        };
        [header.as_bytes(), body].concat()
    }

    fn decode_err(bytes: &[u8]) -> DecodeError {
        match decode_message(bytes, vec![]) {
            Err(MessageError::Decode(e)) => e,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn version_with_qemu_capabilities() {
        let mut body = vec![0, 0, 0, 0];
        body.extend_from_slice(br#"{"capabilities":{"max_msg_fds":16,"max_data_xfer_size":1048576,"pgsizes":4096,"max_dma_maps":65535,"migration":{"pgsize":4096,"max_bitmap_size":1048576},"write_multiple":true}}"#);
        body.push(0);
        let bytes = message(1, 0, &body);
        let (header, request) = decode_message(&bytes, vec![]).unwrap();
        assert_eq!(header.message_id.get(), 7);
        assert!(matches!(
            request,
            ClientRequest::Version {
                major: 0,
                minor: 0,
                caps: ClientCaps {
                    max_msg_fds: 16,
                    max_data_xfer_size: 1048576
                }
            }
        ));
    }

    #[test]
    fn version_errors() {
        assert_eq!(
            decode_err(&message(1, 0, &[1, 0, 0, 0])).errno(),
            libc::ENOTSUP
        );
        assert!(matches!(
            decode_err(&message(1, 0, b"\0\0\0\0{}")),
            DecodeError::Capabilities(CapabilitiesError::NotTerminated)
        ));
        assert!(matches!(
            decode_err(&message(1, 0, b"\0\0\0\0{\0")),
            DecodeError::Capabilities(CapabilitiesError::Json { .. })
        ));
        assert!(matches!(
            decode_err(&message(
                1,
                0,
                b"\0\0\0\0{\"capabilities\":{\"max_msg_fds\":-1}}\0"
            )),
            DecodeError::Capabilities(CapabilitiesError::NotU32("max_msg_fds"))
        ));
    }

    #[test]
    fn unknown_command_is_enosys() {
        assert_eq!(decode_err(&message(99, 0, &[])).errno(), libc::ENOSYS);
        assert_eq!(decode_err(&message(11, 0, &[])).errno(), libc::ENOSYS);
    }

    #[test]
    fn framing_errors() {
        assert!(matches!(
            decode_message(&[0; 8], vec![]),
            Err(MessageError::ShortHeader)
        ));
        let mut bytes = message(4, 0, &[]);
        bytes[4] = 8;
        assert!(matches!(
            decode_message(&bytes, vec![]),
            Err(MessageError::Framing(FramingError::TooShort(8)))
        ));
        assert!(matches!(
            decode_message(&message(4, 1, &[0; 16]), vec![]),
            Err(MessageError::Framing(FramingError::NotACommand(1)))
        ));
        let mut bytes = message(4, 0, &[0; 16]);
        bytes.pop();
        assert!(matches!(
            decode_message(&bytes, vec![]),
            Err(MessageError::ShortBody { .. })
        ));
    }

    #[test]
    fn short_bodies_and_small_argsz_are_einval() {
        assert_eq!(decode_err(&message(2, 0, &[0; 31])).errno(), libc::EINVAL);
        assert!(matches!(
            decode_err(&message(
                4,
                0,
                &[8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
            )),
            DecodeError::ArgszTooSmall { argsz: 8, need: 16 }
        ));
        let mut region_info = [0u8; 32];
        region_info[0] = 16;
        assert!(matches!(
            decode_err(&message(5, 0, &region_info)),
            DecodeError::ArgszTooSmall {
                argsz: 16,
                need: 32
            }
        ));
    }

    #[test]
    fn region_write_length_must_match_count() {
        let access = RegionAccess {
            count: 4.into(),
            ..Default::default()
        };
        let mut body = [access.as_bytes(), &[1, 2, 3]].concat();
        assert!(matches!(
            decode_err(&message(10, 0, &body)),
            DecodeError::BadLength { .. }
        ));
        body.push(4);
        let bytes = message(10, 0, &body);
        let (_, request) = decode_message(&bytes, vec![]).unwrap();
        assert!(matches!(request, ClientRequest::RegionWrite { data, .. } if data == [1, 2, 3, 4]));
    }

    #[test]
    fn oversized_read_is_e2big() {
        let access = RegionAccess {
            count: (MAX_DATA_XFER_SIZE + 1).into(),
            ..Default::default()
        };
        assert_eq!(
            decode_err(&message(9, 0, access.as_bytes())).errno(),
            libc::E2BIG
        );
    }

    #[test]
    fn fds_where_none_belong_are_einval() {
        let fd = OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
        match decode_message(&message(13, 0, &[]), vec![fd]) {
            Err(MessageError::Decode(e)) => {
                assert_eq!(e, DecodeError::TooManyFds { got: 1, allowed: 0 })
            }
            other => panic!("{other:?}"),
        }
    }
}
