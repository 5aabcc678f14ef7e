//! A vfio-user client written from QEMU's docs/interop/vfio-user.rst.
//!
//! `vfio_user::Client` 0.1.7 waits forever when a reply carries an error, cannot send posted
//! (NO_REPLY) writes as QEMU does for BAR writes, and has no GET_REGION_IO_FDS; hostile tests and the
//! benchmark need all three, so this client speaks the protocol itself. Every wait on the socket is
//! bounded by a read timeout so that a broken server fails a test instead of hanging it.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// Message header size (id, command, size, flags, error).
const HEADER_SIZE: usize = 16;
/// The most descriptors accepted with one reply.
const MAX_REPLY_FDS: usize = 16;
/// Bytes of one ioeventfd sub-region in a GET_REGION_IO_FDS reply.
const IO_FD_ENTRY_SIZE: usize = 40;
/// Largest reply this client accepts: a region read of 1 MiB plus its header.
const MAX_REPLY_SIZE: usize = (1 << 20) + 64;

const FLAG_TYPE_MASK: u32 = 0xf;
const FLAG_TYPE_REPLY: u32 = 1;
const FLAG_NO_REPLY: u32 = 1 << 4;
const FLAG_ERROR: u32 = 1 << 5;

/// vfio-user command numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum CommandNumber {
    Version = 1,
    DmaMap = 2,
    DmaUnmap = 3,
    DeviceGetInfo = 4,
    DeviceGetRegionInfo = 5,
    DeviceGetRegionIoFds = 6,
    DeviceGetIrqInfo = 7,
    DeviceSetIrqs = 8,
    RegionRead = 9,
    RegionWrite = 10,
    DeviceReset = 13,
}

/// Failures of the vfio-user conversation.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {path}: {source}")]
    Connect { path: String, source: io::Error },
    #[error("socket I/O failed during {command:?}: {source}")]
    Io {
        command: CommandNumber,
        source: io::Error,
    },
    #[error("{command:?} failed on the server with errno {errno}")]
    Server { command: CommandNumber, errno: u32 },
    #[error("malformed reply to {command:?}: {reason}")]
    BadReply {
        command: CommandNumber,
        reason: String,
    },
    #[error("request too large: {0} bytes")]
    RequestTooLarge(usize),
}

pub type Result<T> = std::result::Result<T, ClientError>;

/// DEVICE_GET_INFO reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceInfoReply {
    pub flags: u32,
    pub num_regions: u32,
    pub num_irqs: u32,
}

/// DEVICE_GET_REGION_INFO reply (without its capability chain).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionInfoReply {
    pub argsz: u32,
    pub flags: u32,
    pub index: u32,
    pub cap_offset: u32,
    pub size: u64,
    pub offset: u64,
}

/// DEVICE_GET_IRQ_INFO reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IrqInfoReply {
    pub flags: u32,
    pub index: u32,
    pub count: u32,
}

/// One ioeventfd sub-region of a GET_REGION_IO_FDS reply, with its descriptor.
#[derive(Debug)]
pub struct IoEventFd {
    pub offset: u64,
    pub size: u64,
    pub flags: u32,
    pub datamatch: u64,
    pub fd: File,
}

/// A reply as received: header fields, payload and any descriptors.
struct ReplyMessage {
    flags: u32,
    error: u32,
    payload: Vec<u8>,
    fds: Vec<File>,
}

/// Message ids and whole-message writes shared by the client and its posted writers, so that
/// messages from several threads never interleave on the socket.
#[derive(Clone, Debug, Default)]
struct Sender {
    next_id: Arc<AtomicU16>,
    lock: Arc<Mutex<()>>,
}

impl Sender {
    fn send(
        &self,
        mut stream: &UnixStream,
        command: CommandNumber,
        flags: u32,
        payload: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> Result<u16> {
        let size = HEADER_SIZE + payload.len();
        let size32 = u32::try_from(size).map_err(|_| ClientError::RequestTooLarge(size))?;
        let io = |source| ClientError::Io { command, source };
        let _whole_message = self
            .lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut message = Vec::with_capacity(size);
        message.extend_from_slice(&id.to_le_bytes());
        message.extend_from_slice(&(command as u16).to_le_bytes());
        message.extend_from_slice(&size32.to_le_bytes());
        message.extend_from_slice(&flags.to_le_bytes());
        message.extend_from_slice(&0u32.to_le_bytes());
        message.extend_from_slice(payload);
        if fds.is_empty() {
            stream.write_all(&message).map_err(io)?;
        } else {
            let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
            let sent = stream
                .send_with_fds(&[&message[..]], &raw)
                .map_err(|e| io(io::Error::from_raw_os_error(e.errno())))?;
            stream.write_all(&message[sent..]).map_err(io)?;
        }
        Ok(id)
    }
}

/// Sends posted (NO_REPLY) region writes on the client's socket from another thread, as a vCPU
/// does for notify writes while the main loop talks to the device.
#[derive(Debug)]
pub struct PostedWriter {
    stream: UnixStream,
    sender: Sender,
}

impl PostedWriter {
    pub fn write(&self, region: u32, offset: u64, data: &[u8]) -> Result<()> {
        let payload = region_write_payload(region, offset, data)?;
        self.sender
            .send(
                &self.stream,
                CommandNumber::RegionWrite,
                FLAG_NO_REPLY,
                &payload,
                &[],
            )
            .map(drop)
    }
}

/// A connected vfio-user client (one socket, requests answered in order).
pub struct VfioUserClient {
    stream: UnixStream,
    sender: Sender,
    server_capabilities: String,
}

impl VfioUserClient {
    /// Connects and negotiates version 0.0 with QEMU's capabilities. `timeout` bounds every wait
    /// for a reply; a refused connection is retried for that long too (the server may be between
    /// bind and listen).
    pub fn connect(path: &Path, timeout: Duration) -> Result<Self> {
        let started = Instant::now();
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(stream) => break stream,
                Err(e)
                    if e.kind() == io::ErrorKind::ConnectionRefused
                        && started.elapsed() < timeout =>
                {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(source) => {
                    return Err(ClientError::Connect {
                        path: path.display().to_string(),
                        source,
                    })
                }
            }
        };
        stream
            .set_read_timeout(Some(timeout))
            .map_err(|source| ClientError::Io {
                command: CommandNumber::Version,
                source,
            })?;
        let mut client = VfioUserClient {
            stream,
            sender: Sender::default(),
            server_capabilities: String::new(),
        };
        client.negotiate_version()?;
        Ok(client)
    }

    /// The JSON capabilities the server sent with its VERSION reply.
    pub fn server_capabilities(&self) -> &str {
        &self.server_capabilities
    }

    fn negotiate_version(&mut self) -> Result<()> {
        let json = r#"{"capabilities":{"max_msg_fds":16,"max_data_xfer_size":1048576,"pgsizes":4096,"max_dma_maps":65535}}"#;
        let mut payload = Vec::with_capacity(4 + json.len() + 1);
        payload.extend_from_slice(&0u16.to_le_bytes());
        payload.extend_from_slice(&0u16.to_le_bytes());
        payload.extend_from_slice(json.as_bytes());
        payload.push(0);
        let reply = self.request(CommandNumber::Version, &payload, &[])?;
        let bad = |reason: &str| ClientError::BadReply {
            command: CommandNumber::Version,
            reason: reason.to_string(),
        };
        if reply.payload.len() < 4 {
            return Err(bad("shorter than major and minor"));
        }
        let major = u16::from_le_bytes([reply.payload[0], reply.payload[1]]);
        if major != 0 {
            return Err(bad(&format!("major version {major}")));
        }
        let text = &reply.payload[4..];
        let text = text.strip_suffix(&[0]).unwrap_or(text);
        self.server_capabilities = String::from_utf8_lossy(text).into_owned();
        Ok(())
    }

    /// DMA_MAP of `size` bytes of `fd` at `fd_offset` to `iova`, readable and writable.
    pub fn dma_map(
        &mut self,
        iova: u64,
        size: u64,
        fd: BorrowedFd<'_>,
        fd_offset: u64,
    ) -> Result<()> {
        let mut payload = Vec::with_capacity(32);
        payload.extend_from_slice(&32u32.to_le_bytes());
        payload.extend_from_slice(&3u32.to_le_bytes());
        payload.extend_from_slice(&fd_offset.to_le_bytes());
        payload.extend_from_slice(&iova.to_le_bytes());
        payload.extend_from_slice(&size.to_le_bytes());
        self.request(CommandNumber::DmaMap, &payload, &[fd])
            .map(drop)
    }

    /// DMA_UNMAP of the range `iova..iova+size`.
    pub fn dma_unmap(&mut self, iova: u64, size: u64) -> Result<()> {
        let mut payload = Vec::with_capacity(24);
        payload.extend_from_slice(&24u32.to_le_bytes());
        payload.extend_from_slice(&0u32.to_le_bytes());
        payload.extend_from_slice(&iova.to_le_bytes());
        payload.extend_from_slice(&size.to_le_bytes());
        self.request(CommandNumber::DmaUnmap, &payload, &[])
            .map(drop)
    }

    pub fn device_info(&mut self) -> Result<DeviceInfoReply> {
        let mut payload = vec![0u8; 16];
        payload[0..4].copy_from_slice(&16u32.to_le_bytes());
        let reply = self.request(CommandNumber::DeviceGetInfo, &payload, &[])?;
        let p = expect_len(CommandNumber::DeviceGetInfo, &reply.payload, 16)?;
        Ok(DeviceInfoReply {
            flags: le_u32(p, 4),
            num_regions: le_u32(p, 8),
            num_irqs: le_u32(p, 12),
        })
    }

    pub fn region_info(&mut self, index: u32) -> Result<RegionInfoReply> {
        let mut payload = vec![0u8; 32];
        payload[0..4].copy_from_slice(&32u32.to_le_bytes());
        payload[8..12].copy_from_slice(&index.to_le_bytes());
        let reply = self.request(CommandNumber::DeviceGetRegionInfo, &payload, &[])?;
        let p = expect_len(CommandNumber::DeviceGetRegionInfo, &reply.payload, 32)?;
        Ok(RegionInfoReply {
            argsz: le_u32(p, 0),
            flags: le_u32(p, 4),
            index: le_u32(p, 8),
            cap_offset: le_u32(p, 12),
            size: le_u64(p, 16),
            offset: le_u64(p, 24),
        })
    }

    pub fn irq_info(&mut self, index: u32) -> Result<IrqInfoReply> {
        let mut payload = vec![0u8; 16];
        payload[0..4].copy_from_slice(&16u32.to_le_bytes());
        payload[8..12].copy_from_slice(&index.to_le_bytes());
        let reply = self.request(CommandNumber::DeviceGetIrqInfo, &payload, &[])?;
        let p = expect_len(CommandNumber::DeviceGetIrqInfo, &reply.payload, 16)?;
        Ok(IrqInfoReply {
            flags: le_u32(p, 4),
            index: le_u32(p, 8),
            count: le_u32(p, 12),
        })
    }

    /// SET_IRQS with raw flags; `fds` travel as ancillary data.
    pub fn set_irqs(
        &mut self,
        index: u32,
        flags: u32,
        start: u32,
        count: u32,
        eventfds: &[&EventFd],
    ) -> Result<()> {
        let mut payload = Vec::with_capacity(20);
        payload.extend_from_slice(&20u32.to_le_bytes());
        payload.extend_from_slice(&flags.to_le_bytes());
        payload.extend_from_slice(&index.to_le_bytes());
        payload.extend_from_slice(&start.to_le_bytes());
        payload.extend_from_slice(&count.to_le_bytes());
        let fds: Vec<BorrowedFd<'_>> = eventfds.iter().map(|fd| borrow_eventfd(fd)).collect();
        self.request(CommandNumber::DeviceSetIrqs, &payload, &fds)
            .map(drop)
    }

    /// REGION_READ of `data.len()` bytes at `offset` of `region`.
    pub fn region_read(&mut self, region: u32, offset: u64, data: &mut [u8]) -> Result<()> {
        let count =
            u32::try_from(data.len()).map_err(|_| ClientError::RequestTooLarge(data.len()))?;
        let payload = region_access(region, offset, count);
        let reply = self.request(CommandNumber::RegionRead, &payload, &[])?;
        let p = expect_len(CommandNumber::RegionRead, &reply.payload, 16 + data.len())?;
        if le_u32(p, 12) != count {
            return Err(ClientError::BadReply {
                command: CommandNumber::RegionRead,
                reason: format!("count {} instead of {count}", le_u32(p, 12)),
            });
        }
        data.copy_from_slice(&p[16..16 + data.len()]);
        Ok(())
    }

    /// REGION_WRITE that waits for the server's reply (as QEMU does for config space).
    pub fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> Result<()> {
        let payload = region_write_payload(region, offset, data)?;
        self.request(CommandNumber::RegionWrite, &payload, &[])
            .map(drop)
    }

    /// REGION_WRITE with NO_REPLY, as QEMU posts memory BAR writes.
    pub fn region_write_posted(&mut self, region: u32, offset: u64, data: &[u8]) -> Result<()> {
        let payload = region_write_payload(region, offset, data)?;
        self.send(CommandNumber::RegionWrite, FLAG_NO_REPLY, &payload, &[])
            .map(drop)
    }

    /// DEVICE_GET_REGION_IO_FDS for `region`; an empty list when the server offers none.
    pub fn region_io_fds(&mut self, region: u32) -> Result<Vec<IoEventFd>> {
        let mut payload = vec![0u8; 16];
        let argsz = 16 + 64 * IO_FD_ENTRY_SIZE as u32;
        payload[0..4].copy_from_slice(&argsz.to_le_bytes());
        payload[8..12].copy_from_slice(&region.to_le_bytes());
        let command = CommandNumber::DeviceGetRegionIoFds;
        let reply = self.request(command, &payload, &[])?;
        let p = expect_len(command, &reply.payload, 16)?;
        let count = le_u32(p, 12) as usize;
        let needed = 16 + count * IO_FD_ENTRY_SIZE;
        let p = expect_len(command, &reply.payload, needed)?;
        let mut out = Vec::with_capacity(count);
        for i in 0..count {
            let e = &p[16 + i * IO_FD_ENTRY_SIZE..16 + (i + 1) * IO_FD_ENTRY_SIZE];
            let fd_index = le_u32(e, 16) as usize;
            // Several sub-regions may share one descriptor, so each gets its own duplicate.
            let fd = reply
                .fds
                .get(fd_index)
                .ok_or_else(|| ClientError::BadReply {
                    command,
                    reason: format!("sub-region {i} names fd {fd_index}, which was not sent"),
                })?
                .try_clone()
                .map_err(|source| ClientError::Io { command, source })?;
            out.push(IoEventFd {
                offset: le_u64(e, 0),
                size: le_u64(e, 8),
                flags: le_u32(e, 24),
                datamatch: le_u64(e, 32),
                fd,
            });
        }
        Ok(out)
    }

    pub fn device_reset(&mut self) -> Result<()> {
        self.request(CommandNumber::DeviceReset, &[], &[]).map(drop)
    }

    fn request(
        &mut self,
        command: CommandNumber,
        payload: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> Result<ReplyMessage> {
        let id = self.send(command, 0, payload, fds)?;
        let reply = self.receive(command, id)?;
        if reply.flags & FLAG_ERROR != 0 {
            return Err(ClientError::Server {
                command,
                errno: reply.error,
            });
        }
        Ok(reply)
    }

    fn send(
        &mut self,
        command: CommandNumber,
        flags: u32,
        payload: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> Result<u16> {
        self.sender.send(&self.stream, command, flags, payload, fds)
    }

    /// A writer for posted region writes that shares this client's socket and message ids.
    pub fn posted_writer(&self) -> Result<PostedWriter> {
        let stream = self.stream.try_clone().map_err(|source| ClientError::Io {
            command: CommandNumber::RegionWrite,
            source,
        })?;
        Ok(PostedWriter {
            stream,
            sender: self.sender.clone(),
        })
    }

    fn receive(&mut self, command: CommandNumber, id: u16) -> Result<ReplyMessage> {
        let io = |source| ClientError::Io { command, source };
        let mut header = [0u8; HEADER_SIZE];
        let mut raw_fds = [-1 as RawFd; MAX_REPLY_FDS];
        let mut iov = [libc::iovec {
            iov_base: header.as_mut_ptr().cast(),
            iov_len: header.len(),
        }];
        // SAFETY: the iovec points at `header`, which lives through the call and may take any bytes.
        let (got, nfds) = unsafe { self.stream.recv_with_fds(&mut iov, &mut raw_fds) }
            .map_err(|e| io(io::Error::from_raw_os_error(e.errno())))?;
        // SAFETY: recvmsg handed us ownership of the first `nfds` descriptors.
        let fds: Vec<File> = raw_fds[..nfds]
            .iter()
            .map(|&fd| unsafe { File::from_raw_fd(fd) })
            .collect();
        if got == 0 {
            return Err(io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "server closed the socket",
            )));
        }
        self.stream.read_exact(&mut header[got..]).map_err(io)?;
        let reply_id = u16::from_le_bytes([header[0], header[1]]);
        let reply_command = u16::from_le_bytes([header[2], header[3]]);
        let size = le_u32(&header, 4) as usize;
        let flags = le_u32(&header, 8);
        let error = le_u32(&header, 12);
        let bad = |reason: String| ClientError::BadReply { command, reason };
        if !(HEADER_SIZE..=MAX_REPLY_SIZE).contains(&size) {
            return Err(bad(format!("message size {size}")));
        }
        let mut payload = vec![0u8; size - HEADER_SIZE];
        self.stream.read_exact(&mut payload).map_err(io)?;
        if reply_id != id || reply_command != command as u16 {
            return Err(bad(format!(
                "reply id {reply_id} command {reply_command}, expected id {id} command {}",
                command as u16
            )));
        }
        if flags & FLAG_TYPE_MASK != FLAG_TYPE_REPLY {
            return Err(bad(format!("flags {flags:#x} do not mark a reply")));
        }
        Ok(ReplyMessage {
            flags,
            error,
            payload,
            fds,
        })
    }

    /// The socket's descriptor, to wait on it for a (possibly unexpected) message.
    pub fn as_raw_fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }
}

fn borrow_eventfd(eventfd: &EventFd) -> BorrowedFd<'_> {
    // SAFETY: `eventfd` owns the descriptor and outlives the borrow, which is tied to it.
    unsafe { BorrowedFd::borrow_raw(eventfd.as_raw_fd()) }
}

fn region_access(region: u32, offset: u64, count: u32) -> Vec<u8> {
    let mut payload = Vec::with_capacity(16);
    payload.extend_from_slice(&offset.to_le_bytes());
    payload.extend_from_slice(&region.to_le_bytes());
    payload.extend_from_slice(&count.to_le_bytes());
    payload
}

fn region_write_payload(region: u32, offset: u64, data: &[u8]) -> Result<Vec<u8>> {
    let count = u32::try_from(data.len()).map_err(|_| ClientError::RequestTooLarge(data.len()))?;
    let mut payload = region_access(region, offset, count);
    payload.extend_from_slice(data);
    Ok(payload)
}

fn expect_len(command: CommandNumber, payload: &[u8], len: usize) -> Result<&[u8]> {
    if payload.len() < len {
        return Err(ClientError::BadReply {
            command,
            reason: format!("{} payload bytes, expected at least {len}", payload.len()),
        });
    }
    Ok(payload)
}

fn le_u32(bytes: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(b)
}

fn le_u64(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(b)
}
