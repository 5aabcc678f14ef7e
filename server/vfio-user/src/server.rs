//! The main loop: one mio `Poll` watching the listening socket, the current client, the device's
//! own fds and the application's (`MainLoopHook`). One client at a time: another one is refused
//! while a client is attached; after it leaves, the device is reset, its DMA and IRQ fds are
//! dropped, and the next client on the same path is served. A client that does not complete
//! VERSION within `HANDSHAKE_TIMEOUT` is sent away, so that a connection that never speaks
//! cannot keep every later client, QEMU included, out.
//!
//! Each message is decoded (`connection.rs`) and routed here to the device or the DMA table; the
//! reply body is built here too, and queued on the client's `Connection`.

use std::io;
use std::mem::size_of;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::UnixListener;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use slog::{debug, info, warn, Drain, Logger};
use smallvec::{smallvec, SmallVec};
use zerocopy::{Immutable, IntoBytes};

use crate::connection::{
    decode_request, ClientCaps, ClientRequest, Connection, DecodeError, FramingError, Incoming,
    ReadOutcome, MAX_RECV_FDS,
};
use crate::device::{Device, DeviceError, DmaMemory, IrqAction, RegionInfo};
use crate::dma::{DmaChange, DmaError, DmaTable};
use crate::protocol::{
    DmaUnmap, Header, InfoHead, IoFdSubRegion, RegionAccess, RegionInfoHead, SparseMmapArea,
    SparseMmapCap, Version, VfioUserCommand, FLAG_ERROR, FLAG_TYPE_REPLY, HEADER_SIZE,
    IO_FD_FLAG_DATAMATCH, IO_FD_TYPE_IOEVENTFD, MAX_DATA_XFER_SIZE, MAX_MSG_FDS, PAGE_SIZE,
    VFIO_DEVICE_FLAGS_PCI, VFIO_DEVICE_FLAGS_RESET, VFIO_IRQ_INFO_AUTOMASKED,
    VFIO_IRQ_INFO_EVENTFD, VFIO_IRQ_INFO_MASKABLE, VFIO_IRQ_INFO_NORESIZE,
    VFIO_REGION_INFO_CAP_SPARSE_MMAP, VFIO_REGION_INFO_FLAG_CAPS, VFIO_REGION_INFO_FLAG_MMAP,
    VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
};
use crate::socket_path::{BoundSocket, SocketAccess, SocketPathError};

const LISTENER: Token = Token(0);
const CLIENT: Token = Token(1);
const HOOK: Token = Token(2);
const WAKER: Token = Token(3);
const FIRST_DEVICE_FD: usize = 16;
/// How long a new client has to complete VERSION.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("socket: {0}")]
    Socket(#[from] SocketPathError),
    #[error("event loop: {0}")]
    Poll(io::Error),
}

/// Where the server listens: a socket it bound (and removes at the end) or one it was given.
pub struct Listener {
    socket_file: Option<BoundSocket>,
    listener: std::os::unix::net::UnixListener,
}

impl Listener {
    pub fn bind(path: &Path, access: &SocketAccess) -> Result<Listener, SocketPathError> {
        let (socket_file, listener) = BoundSocket::bind(path, access)?;
        Ok(Listener {
            socket_file: Some(socket_file),
            listener,
        })
    }

    /// A listening socket someone else created and will remove (socket activation).
    pub fn inherited(listener: std::os::unix::net::UnixListener) -> Listener {
        Listener {
            socket_file: None,
            listener,
        }
    }
}

/// The socket a log record names: the path of the file the server bound, or `inherited`.
fn describe(socket_file: Option<&BoundSocket>) -> String {
    match socket_file {
        Some(socket_file) => socket_file.path().display().to_string(),
        None => "inherited".into(),
    }
}

/// What the main loop tells the application's hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerStatus {
    pub client_connected: bool,
}

/// Whether the main loop goes on after the hook ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Stop,
}

/// The application's share of the main loop (signals, a control socket): one fd, readable when
/// the hook has work, served on the main loop's thread with the device at hand.
pub trait MainLoopHook<D: Device> {
    fn fd(&self) -> BorrowedFd<'_>;
    /// `fd()` became readable (edge-triggered: do all the work that waits).
    fn ready(&mut self, device: &mut D, status: ServerStatus) -> Flow;
}

/// Stops a running server from another thread.
#[derive(Clone)]
pub struct ShutdownHandle(Arc<Waker>);

impl ShutdownHandle {
    pub fn shutdown(&self) -> io::Result<()> {
        self.0.wake()
    }
}

struct Client {
    connection: Connection,
    session: Session,
    connected_at: Instant,
}

impl Client {
    /// When the client will be sent away unless it completes VERSION first.
    fn handshake_deadline(&self) -> Option<Instant> {
        match self.session.caps {
            Some(_) => None,
            None => Some(self.connected_at + HANDSHAKE_TIMEOUT),
        }
    }
}

/// Why a client's connection ended.
enum Disconnect {
    Closed,
    ClosedMidMessage,
    Garbled(FramingError),
    Io(io::Error),
    HandshakeTimeout,
}

pub struct Server<D: Device> {
    /// The socket file the server bound, removed when the server stops; `None` when the
    /// listening socket was inherited.
    socket_file: Option<BoundSocket>,
    /// The listening socket clients connect to, watched by the event loop.
    listener: UnixListener,
    poll: Poll,
    waker: Arc<Waker>,
    device: D,
    /// The device's regions, read once: they do not change during its life.
    regions: Vec<RegionInfo>,
    dma: DmaTable,
    client: Option<Client>,
    /// Connections wait in the listen backlog while the client has not completed VERSION: it
    /// may yet be sent away (HANDSHAKE_TIMEOUT) and the next one served.
    backlog_waiting: bool,
    log: Logger,
}

impl<D: Device> Server<D> {
    /// Binds `socket_path` (mode 0600) and prepares to serve `device`, whose DMA view is
    /// `memory`.
    pub fn new(
        socket_path: &Path,
        device: D,
        memory: DmaMemory,
        log: Logger,
    ) -> Result<Server<D>, ServerError> {
        let listener = Listener::bind(socket_path, &SocketAccess::default())?;
        Server::with_listener(listener, device, memory, log)
    }

    pub fn with_listener(
        listener: Listener,
        device: D,
        memory: DmaMemory,
        log: Logger,
    ) -> Result<Server<D>, ServerError> {
        let Listener {
            socket_file,
            listener,
        } = listener;
        let mut listener = UnixListener::from_std(listener);
        let poll = Poll::new().map_err(ServerError::Poll)?;
        let registry = poll.registry();
        registry
            .register(&mut listener, LISTENER, Interest::READABLE)
            .map_err(ServerError::Poll)?;
        let waker = Arc::new(Waker::new(registry, WAKER).map_err(ServerError::Poll)?);
        for (i, fd) in device.event_fds().iter().enumerate() {
            registry
                .register(
                    &mut SourceFd(&fd.as_raw_fd()),
                    Token(FIRST_DEVICE_FD + i),
                    Interest::READABLE,
                )
                .map_err(ServerError::Poll)?;
        }
        info!(log, "listening"; "socket" => describe(socket_file.as_ref()));
        Ok(Server {
            socket_file,
            listener,
            poll,
            waker,
            regions: device.regions(),
            device,
            dma: DmaTable::new(memory),
            client: None,
            backlog_waiting: false,
            log,
        })
    }

    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(Arc::clone(&self.waker))
    }

    /// Serves clients until a `ShutdownHandle` stops it; a socket file it bound is removed.
    pub fn run(self) -> Result<(), ServerError> {
        self.run_with(None)
    }

    /// Serves clients until `hook` or a `ShutdownHandle` stops it.
    pub fn run_with(
        mut self,
        mut hook: Option<&mut dyn MainLoopHook<D>>,
    ) -> Result<(), ServerError> {
        if let Some(hook) = hook.as_deref() {
            self.poll
                .registry()
                .register(
                    &mut SourceFd(&hook.fd().as_raw_fd()),
                    HOOK,
                    Interest::READABLE,
                )
                .map_err(ServerError::Poll)?;
        }
        let mut events = Events::with_capacity(64);
        loop {
            let deadline = self.client.as_ref().and_then(Client::handshake_deadline);
            let timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ServerError::Poll(e)),
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(),
                    CLIENT => self.serve_client(event.is_read_closed()),
                    HOOK => {
                        let status = ServerStatus {
                            client_connected: self.client.is_some(),
                        };
                        let flow = hook
                            .as_deref_mut()
                            .map_or(Flow::Continue, |hook| hook.ready(&mut self.device, status));
                        if flow == Flow::Stop {
                            return self.stop();
                        }
                    }
                    WAKER => {
                        info!(self.log, "stopping"; "reason" => "shutdown requested");
                        return self.stop();
                    }
                    Token(t) => self.device.event_ready(t - FIRST_DEVICE_FD),
                }
            }
            let deadline = self.client.as_ref().and_then(Client::handshake_deadline);
            if deadline.is_some_and(|d| d <= Instant::now()) {
                self.disconnect(Disconnect::HandshakeTimeout);
            }
        }
    }

    fn stop(mut self) -> Result<(), ServerError> {
        self.release_client(Disconnect::Closed);
        info!(self.log, "stopped"; "socket" => describe(self.socket_file.as_ref()));
        Ok(())
    }

    fn accept(&mut self) {
        loop {
            if self.client.is_some() {
                // A client that has already hung up (not yet handled) is no obstacle.
                if let Err(reason) = self.serve_messages(true) {
                    self.release_client(reason);
                }
            }
            self.backlog_waiting = self
                .client
                .as_ref()
                .is_some_and(|client| client.handshake_deadline().is_some());
            if self.backlog_waiting {
                return;
            }
            match self.listener.accept() {
                Ok((stream, _)) if self.client.is_some() => {
                    // Closing is the refusal: a vfio-user client waits for its VERSION reply
                    // and sees the connection end instead.
                    warn!(self.log, "second client refused"; "reason" => "a client is attached");
                    drop(stream);
                }
                Ok((mut stream, _)) => {
                    if let Err(e) = self.poll.registry().register(
                        &mut stream,
                        CLIENT,
                        Interest::READABLE | Interest::WRITABLE,
                    ) {
                        warn!(self.log, "cannot watch client"; "error" => %e);
                        continue;
                    }
                    info!(self.log, "client connected");
                    // Whatever the client already sent is reported by the registration itself.
                    self.client = Some(Client {
                        connection: Connection::new(stream),
                        session: Session::default(),
                        connected_at: Instant::now(),
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    warn!(self.log, "accept failed"; "error" => %e);
                    return;
                }
            }
        }
    }

    /// Handles what the client sent until the socket is drained or a reply has to wait.
    fn serve_client(&mut self, peer_closed: bool) {
        if let Err(reason) = self.serve_messages(peer_closed) {
            return self.disconnect(reason);
        }
        let attached = self
            .client
            .as_ref()
            .is_some_and(|client| client.handshake_deadline().is_none());
        if self.backlog_waiting && attached {
            // The client is attached for good: those who waited are refused now.
            self.accept();
        }
    }

    /// `peer_closed`: the readiness event said the client shut its end down, or the caller
    /// needs to know whether it did (reads go on until EAGAIN or the end of the stream).
    fn serve_messages(&mut self, peer_closed: bool) -> Result<(), Disconnect> {
        // The level cannot change while this thread serves messages: the control socket that
        // changes it is served on this thread too.
        let log_messages = self.log.is_debug_enabled();
        if let Some(client) = self.client.as_mut() {
            client.connection.readable(peer_closed);
        }
        loop {
            let Some(client) = self.client.as_mut() else {
                return Ok(());
            };
            if client.connection.has_pending_output() {
                client.connection.flush().map_err(Disconnect::Io)?;
                if client.connection.has_pending_output() {
                    // Read no more until the client takes its replies.
                    return Ok(());
                }
            }
            if client.connection.is_drained() {
                return Ok(());
            }
            let (header, body_len, result) =
                match client.connection.read_message().map_err(Disconnect::Io)? {
                    ReadOutcome::WouldBlock => return Ok(()),
                    ReadOutcome::Closed { partial: false } => return Err(Disconnect::Closed),
                    ReadOutcome::Closed { partial: true } => {
                        return Err(Disconnect::ClosedMidMessage)
                    }
                    ReadOutcome::Framing(e) => return Err(Disconnect::Garbled(e)),
                    ReadOutcome::Incoming(Incoming::Oversized { header, body_len }) => (
                        header,
                        body_len,
                        Err(DecodeError::TooLarge(body_len).into()),
                    ),
                    ReadOutcome::Incoming(Incoming::Message {
                        header,
                        body,
                        fds,
                        fds_truncated,
                    }) => {
                        let result = if fds_truncated && fds.len() < MAX_RECV_FDS {
                            // There was room for more fds than came: the kernel could not
                            // install them, the process is out of descriptors.
                            Err(RequestError::FdsExhausted {
                                received: fds.len(),
                            })
                        } else if fds_truncated {
                            Err(DecodeError::TooManyFds {
                                got: fds.len(),
                                allowed: MAX_MSG_FDS,
                            }
                            .into())
                        } else {
                            decode_request(&header, body, fds)
                                .map_err(RequestError::from)
                                .and_then(|request| {
                                    handle(
                                        &mut self.device,
                                        &self.regions,
                                        &mut self.dma,
                                        &mut client.session,
                                        request,
                                        body.len(),
                                    )
                                })
                        };
                        (header, body.len(), result)
                    }
                };
            self.finish(&header, body_len, result, log_messages);
        }
    }

    /// Logs the outcome of one message (`log_messages`: at debug level too) and queues its
    /// reply, unless the client asked for none.
    fn finish(
        &mut self,
        header: &Header,
        body_len: usize,
        result: Result<ServerReply, RequestError>,
        log_messages: bool,
    ) {
        let no_reply = header.no_reply();
        let error = result.as_ref().err().map_or(0, RequestError::errno);
        if log_messages || result.is_err() {
            self.log_message(header, body_len, &result, error);
        }
        if header.command.get() == VfioUserCommand::DeviceReset as u16 && result.is_ok() {
            info!(self.log, "device reset"; "by" => "client");
        }
        if no_reply {
            return;
        }
        let (flags, body, fds) = match result {
            Ok(reply) => (FLAG_TYPE_REPLY, reply.body, reply.fds),
            Err(_) => (FLAG_TYPE_REPLY | FLAG_ERROR, ReplyBody::new(), Vec::new()),
        };
        let reply_header = Header {
            message_id: header.message_id,
            command: header.command,
            message_size: ((HEADER_SIZE + body.len()) as u32).into(),
            flags: flags.into(),
            error: (error as u32).into(),
        };
        if let Some(client) = self.client.as_mut() {
            client.connection.queue(reply_header.as_bytes(), &body, fds);
        }
    }

    fn log_message(
        &self,
        header: &Header,
        body_len: usize,
        result: &Result<ServerReply, RequestError>,
        error: i32,
    ) {
        let command = VfioUserCommand::from_u16(header.command.get())
            .map_or("unknown", VfioUserCommand::name);
        let id = header.message_id.get();
        let no_reply = header.no_reply();
        match result {
            Ok(reply) => debug!(self.log, "message";
                "command" => command, "id" => id, "size" => body_len,
                "reply_size" => reply.body.len(), "reply_fds" => reply.fds.len(), "no_reply" => no_reply, "result" => "ok"),
            Err(e) if e.is_exhaustion() => warn!(self.log, "out of resources";
                "command" => command, "id" => id, "errno" => error, "error" => %e),
            Err(e) if no_reply => warn!(self.log, "posted message failed";
                "command" => command, "id" => id, "size" => body_len, "errno" => error, "error" => %e),
            Err(e) => debug!(self.log, "message";
                "command" => command, "id" => id, "size" => body_len, "no_reply" => no_reply,
                "result" => "error", "errno" => error, "error" => %e),
        }
    }

    /// Ends the current client's connection and serves the next one waiting, if any.
    fn disconnect(&mut self, reason: Disconnect) {
        self.release_client(reason);
        self.accept();
    }

    /// Closes the client's connection, drops its DMA mappings and IRQ fds, and resets the device.
    fn release_client(&mut self, reason: Disconnect) {
        let Some(mut client) = self.client.take() else {
            return;
        };
        let _ = self
            .poll
            .registry()
            .deregister(client.connection.stream_mut());
        drop(client);
        match reason {
            Disconnect::Closed => info!(self.log, "client disconnected"),
            Disconnect::ClosedMidMessage => {
                info!(self.log, "client disconnected"; "reason" => "closed in the middle of a message")
            }
            Disconnect::Garbled(why) => {
                warn!(self.log, "client disconnected"; "reason" => "garbled header", "error" => %why)
            }
            Disconnect::Io(e) => {
                warn!(self.log, "client disconnected"; "reason" => "socket error", "error" => %e)
            }
            Disconnect::HandshakeTimeout => {
                warn!(self.log, "client disconnected"; "reason" => "no VERSION in time",
                    "timeout_ms" => HANDSHAKE_TIMEOUT.as_millis())
            }
        }
        self.device.client_disconnected();
        let device = &mut self.device;
        if let Err(e) = self.dma.clear(|change| apply_dma_change(device, change)) {
            warn!(self.log, "unmapping DMA failed"; "error" => %e);
        }
        for irq in self.device.irqs() {
            if irq.eventfd {
                if let Err(e) = self.device.set_irqs(irq.index, IrqAction::Disable) {
                    warn!(self.log, "releasing IRQ eventfds failed"; "index" => irq.index, "error" => %e);
                }
            }
        }
        self.device.reset();
        // Only now may the device's own threads run again: after the reset nothing of theirs
        // touches the memory the client took away.
        self.device.dma_unmapped();
        info!(self.log, "device reset"; "by" => "disconnect");
    }
}

/// Why a request failed; its errno goes into the error reply.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("DMA: {0}")]
    Dma(#[from] DmaError),
    #[error("device: {0}")]
    Device(#[from] DeviceError),
    #[error("VERSION must come first, and only once")]
    VersionOrder,
    #[error("no region {0}")]
    NoSuchRegion(u32),
    #[error("region {region}: {count} bytes at {offset:#x} exceed its {size} bytes")]
    RegionRange {
        region: u32,
        offset: u64,
        count: u32,
        size: u64,
    },
    #[error("region {0} does not allow this access")]
    RegionAccess(u32),
    #[error("no IRQ index {0}")]
    NoSuchIrq(u32),
    #[error("IRQ index {index}: vectors {start}+{count} exceed its {max}")]
    IrqRange {
        index: u32,
        start: u32,
        count: u32,
        max: u32,
    },
    #[error("duplicating an fd for the reply: {0}")]
    Dup(std::io::Error),
    #[error("out of file descriptors: only {received} of the message's fds could be received")]
    FdsExhausted { received: usize },
}

impl RequestError {
    pub fn errno(&self) -> i32 {
        match self {
            RequestError::Decode(e) => e.errno(),
            RequestError::Dma(e) => e.errno(),
            RequestError::Device(e) => e.errno(),
            RequestError::RegionAccess(_) => libc::EACCES,
            RequestError::Dup(e) => e.raw_os_error().unwrap_or(libc::EIO),
            RequestError::FdsExhausted { .. } => libc::EMFILE,
            _ => libc::EINVAL,
        }
    }

    /// Whether the server ran out of a resource, which an operator should hear about.
    pub fn is_exhaustion(&self) -> bool {
        match self {
            RequestError::Dma(e) => e.is_exhaustion(),
            RequestError::FdsExhausted { .. } => true,
            _ => false,
        }
    }
}

/// A reply body: inline up to the largest fixed reply (REGION_INFO) and a 64-bit REGION_READ,
/// so that a region access, posted or not, allocates nothing.
pub type ReplyBody = SmallVec<[u8; 32]>;

/// A reply body and the fds that go with it.
#[derive(Debug, Default)]
pub struct ServerReply {
    pub body: ReplyBody,
    pub fds: Vec<OwnedFd>,
}

impl ServerReply {
    /// A reply of one wire struct and no fds.
    fn of<T: IntoBytes + Immutable>(fixed: &T) -> ServerReply {
        ServerReply {
            body: ReplyBody::from_slice(fixed.as_bytes()),
            fds: Vec::new(),
        }
    }
}

/// Per-connection protocol state.
#[derive(Debug, Default)]
pub struct Session {
    /// Set once VERSION succeeded.
    pub caps: Option<ClientCaps>,
}

/// What the server itself advertises, in the order it gives them up when the client's VERSION
/// request is too short to hold them all.
const SERVER_CAPS: [(&str, u64); 3] = [
    ("max_msg_fds", MAX_MSG_FDS as u64),
    ("max_data_xfer_size", MAX_DATA_XFER_SIZE as u64),
    ("pgsizes", PAGE_SIZE),
];

/// The VERSION reply body: major 0, minor 0, then as many of our capabilities as keep the reply
/// no larger than the request (`request_len` body bytes), NUL-terminated.
pub fn version_reply(request_len: usize) -> Vec<u8> {
    for kept in (0..=SERVER_CAPS.len()).rev() {
        let caps: serde_json::Map<String, serde_json::Value> = SERVER_CAPS[..kept]
            .iter()
            .map(|&(name, value)| (name.to_owned(), value.into()))
            .collect();
        let json = serde_json::json!({ "capabilities": caps }).to_string();
        let body = [Version::default().as_bytes(), json.as_bytes(), b"\0"].concat();
        if body.len() <= request_len {
            return body;
        }
    }
    Version::default().as_bytes().to_vec()
}

fn region(regions: &[RegionInfo], index: u32) -> Result<&RegionInfo, RequestError> {
    // Devices list their regions in index order, as vfio numbers them: every region access
    // looks its region up, so the slot of that index is tried first.
    regions
        .get(index as usize)
        .filter(|r| r.index == index)
        .or_else(|| regions.iter().find(|r| r.index == index))
        .ok_or(RequestError::NoSuchRegion(index))
}

fn check_access(
    region: &RegionInfo,
    access: &RegionAccess,
    allowed: bool,
) -> Result<(), RequestError> {
    let (offset, count) = (access.offset.get(), access.count.get());
    let end = offset.checked_add(u64::from(count));
    if end.is_none_or(|end| end > region.size) {
        return Err(RequestError::RegionRange {
            region: access.region.get(),
            offset,
            count,
            size: region.size,
        });
    }
    if !allowed {
        return Err(RequestError::RegionAccess(access.region.get()));
    }
    Ok(())
}

fn region_info_reply(info: &RegionInfo, argsz: u32) -> Result<ServerReply, RequestError> {
    let mut flags = 0;
    if info.readable {
        flags |= VFIO_REGION_INFO_FLAG_READ;
    }
    if info.writable {
        flags |= VFIO_REGION_INFO_FLAG_WRITE;
    }
    let mut caps = Vec::new();
    let mut file_offset = 0;
    let mut fds = Vec::new();
    if let Some(mmap) = &info.mmap {
        flags |= VFIO_REGION_INFO_FLAG_MMAP;
        file_offset = mmap.file_offset;
        fds.push(
            mmap.fd
                .as_fd()
                .try_clone_to_owned()
                .map_err(RequestError::Dup)?,
        );
        if !mmap.areas.is_empty() {
            flags |= VFIO_REGION_INFO_FLAG_CAPS;
            let cap = SparseMmapCap {
                id: (VFIO_REGION_INFO_CAP_SPARSE_MMAP as u16).into(),
                version: 1.into(),
                next: 0.into(),
                nr_areas: (mmap.areas.len() as u32).into(),
                reserved: 0.into(),
            };
            caps.extend_from_slice(cap.as_bytes());
            for area in &mmap.areas {
                let area = SparseMmapArea {
                    offset: area.offset.into(),
                    size: area.size.into(),
                };
                caps.extend_from_slice(area.as_bytes());
            }
        }
    }
    let needed = size_of::<RegionInfoHead>() + caps.len();
    let fits = argsz as usize >= needed;
    let cap_offset = if fits && !caps.is_empty() {
        size_of::<RegionInfoHead>() as u32
    } else {
        0
    };
    let head = RegionInfoHead {
        argsz: (needed as u32).into(),
        flags: flags.into(),
        index: info.index.into(),
        cap_offset: cap_offset.into(),
        size: info.size.into(),
        offset: file_offset.into(),
    };
    let mut body = ReplyBody::from_slice(head.as_bytes());
    if fits {
        body.extend_from_slice(&caps);
    }
    Ok(ServerReply { body, fds })
}

/// The GET_REGION_IO_FDS reply: the device's sub-regions in its order of preference, as many as
/// the client can take the fds of in one message (its `max_msg_fds`). The spec lets sub-regions
/// share an fd but has no way to continue a list in a second reply, so the rest are left out:
/// the client goes on writing those through REGION_WRITE, which serves them just the same.
fn io_fds_reply<D: Device>(
    device: &D,
    regions: &[RegionInfo],
    index: u32,
    argsz: u32,
    max_fds: usize,
) -> Result<ServerReply, RequestError> {
    region(regions, index)?;
    let io_fds = device.region_io_fds(index)?;
    let mut distinct: Vec<RawFd> = Vec::new();
    let mut sub_regions = Vec::new();
    for io_fd in &io_fds {
        let raw = io_fd.fd.as_raw_fd();
        let fd_index = match distinct.iter().position(|&d| d == raw) {
            Some(i) => i,
            None if distinct.len() < max_fds => {
                distinct.push(raw);
                distinct.len() - 1
            }
            None => continue,
        };
        let flags = if io_fd.datamatch.is_some() {
            IO_FD_FLAG_DATAMATCH
        } else {
            0
        };
        sub_regions.push((
            io_fd,
            IoFdSubRegion {
                offset: io_fd.offset.into(),
                size: io_fd.size.into(),
                fd_index: (fd_index as u32).into(),
                kind: IO_FD_TYPE_IOEVENTFD.into(),
                flags: flags.into(),
                padding: 0.into(),
                datamatch: io_fd.datamatch.unwrap_or(0).into(),
            },
        ));
    }
    let needed = size_of::<InfoHead>() + size_of::<IoFdSubRegion>() * sub_regions.len();
    let head = InfoHead {
        argsz: (needed as u32).into(),
        flags: 0.into(),
        index: index.into(),
        count: (sub_regions.len() as u32).into(),
    };
    if (argsz as usize) < needed {
        return Ok(ServerReply::of(&head));
    }
    let mut body = ReplyBody::from_slice(head.as_bytes());
    let mut fds = Vec::with_capacity(distinct.len());
    for (io_fd, sub_region) in &sub_regions {
        body.extend_from_slice(sub_region.as_bytes());
        if fds.len() == sub_region.fd_index.get() as usize {
            fds.push(io_fd.fd.try_clone_to_owned().map_err(RequestError::Dup)?);
        }
    }
    Ok(ServerReply { body, fds })
}

fn check_irq_range<D: Device>(
    device: &D,
    index: u32,
    action: &IrqAction,
) -> Result<(), RequestError> {
    let info = device
        .irqs()
        .into_iter()
        .find(|i| i.index == index)
        .ok_or(RequestError::NoSuchIrq(index))?;
    let (start, count) = match action {
        IrqAction::Disable => return Ok(()),
        IrqAction::Assign { start, fds } => (*start, fds.len() as u32),
        IrqAction::Trigger { start, count } | IrqAction::Mask { start, count, .. } => {
            (*start, *count)
        }
        IrqAction::TriggerBool { start, values } => (*start, values.len() as u32),
    };
    if u64::from(start) + u64::from(count) > u64::from(info.count) {
        return Err(RequestError::IrqRange {
            index,
            start,
            count,
            max: info.count,
        });
    }
    Ok(())
}

/// Applies a DMA change to the device.
pub fn apply_dma_change<D: Device>(device: &mut D, change: DmaChange) {
    match change {
        DmaChange::Unmapping { iova, size } => device.dma_unmapping(iova, size),
        DmaChange::Mapped { iova, size } => device.dma_mapped(iova, size),
        DmaChange::Shrinkable { iova, size } => device.dma_shrinkable(iova, size),
    }
}

/// Carries out `request` on `device`, whose regions are `regions`; `request_len` is the size of
/// its body on the wire.
pub fn handle<D: Device>(
    device: &mut D,
    regions: &[RegionInfo],
    dma: &mut DmaTable,
    session: &mut Session,
    request: ClientRequest<'_>,
    request_len: usize,
) -> Result<ServerReply, RequestError> {
    let caps = match (&request, session.caps) {
        (ClientRequest::Version { caps, .. }, None) => {
            session.caps = Some(*caps);
            return Ok(ServerReply {
                body: ReplyBody::from_vec(version_reply(request_len)),
                fds: Vec::new(),
            });
        }
        (ClientRequest::Version { .. }, Some(_)) | (_, None) => {
            return Err(RequestError::VersionOrder)
        }
        (_, Some(caps)) => caps,
    };
    match request {
        ClientRequest::Version { .. } => Err(RequestError::VersionOrder),
        ClientRequest::DmaMap { map, fd } => {
            if dma.map(&map, fd, |change| apply_dma_change(device, change))? {
                device.dma_mapped(map.address.get(), map.size.get());
            }
            Ok(ServerReply::default())
        }
        ClientRequest::DmaUnmap(unmap) => {
            let unmapped = dma.unmap(&unmap, |change| apply_dma_change(device, change));
            device.dma_unmapped();
            unmapped?;
            Ok(ServerReply::of(&DmaUnmap {
                argsz: (size_of::<DmaUnmap>() as u32).into(),
                ..unmap
            }))
        }
        ClientRequest::DeviceGetInfo { .. } => {
            let flags = VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_RESET;
            Ok(ServerReply::of(&InfoHead {
                argsz: (size_of::<InfoHead>() as u32).into(),
                flags: flags.into(),
                index: (regions.len() as u32).into(),
                count: (device.irqs().len() as u32).into(),
            }))
        }
        ClientRequest::DeviceGetRegionInfo { argsz, index } => {
            region_info_reply(region(regions, index)?, argsz)
        }
        ClientRequest::DeviceGetRegionIoFds { argsz, index } => io_fds_reply(
            device,
            regions,
            index,
            argsz,
            (caps.max_msg_fds as usize).min(MAX_MSG_FDS),
        ),
        ClientRequest::DeviceGetIrqInfo { index, .. } => {
            let info = device
                .irqs()
                .into_iter()
                .find(|i| i.index == index)
                .ok_or(RequestError::NoSuchIrq(index))?;
            let flags = [
                (info.eventfd, VFIO_IRQ_INFO_EVENTFD),
                (info.maskable, VFIO_IRQ_INFO_MASKABLE),
                (info.automasked, VFIO_IRQ_INFO_AUTOMASKED),
                (info.noresize, VFIO_IRQ_INFO_NORESIZE),
            ]
            .iter()
            .filter(|(set, _)| *set)
            .fold(0, |flags, (_, bit)| flags | bit);
            Ok(ServerReply::of(&InfoHead {
                argsz: (size_of::<InfoHead>() as u32).into(),
                flags: flags.into(),
                index: index.into(),
                count: info.count.into(),
            }))
        }
        ClientRequest::DeviceSetIrqs { index, action } => {
            check_irq_range(device, index, &action)?;
            device.set_irqs(index, action)?;
            Ok(ServerReply::default())
        }
        ClientRequest::RegionRead(access) => {
            let info = region(regions, access.region.get())?;
            check_access(info, &access, info.readable)?;
            let mut body = smallvec![0u8; size_of::<RegionAccess>() + access.count.get() as usize];
            let (head, data) = body.split_at_mut(size_of::<RegionAccess>());
            device.region_read(access.region.get(), access.offset.get(), data)?;
            head.copy_from_slice(access.as_bytes());
            Ok(ServerReply {
                body,
                fds: Vec::new(),
            })
        }
        ClientRequest::RegionWrite { access, data } => {
            let info = region(regions, access.region.get())?;
            check_access(info, &access, info.writable)?;
            device.region_write(access.region.get(), access.offset.get(), data)?;
            Ok(ServerReply::of(&access))
        }
        ClientRequest::DeviceReset => {
            device.reset();
            Ok(ServerReply::default())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_reply_never_exceeds_the_request() {
        let full = version_reply(usize::MAX);
        assert_eq!(&full[..4], &[0, 0, 0, 0]);
        assert_eq!(full.last(), Some(&0));
        let json: serde_json::Value = serde_json::from_slice(&full[4..full.len() - 1]).unwrap();
        assert_eq!(json["capabilities"]["max_msg_fds"], 16);
        assert_eq!(json["capabilities"]["max_data_xfer_size"], 1 << 20);
        assert_eq!(json["capabilities"]["pgsizes"], 4096);
        for limit in [4, 10, 30, 50, 70, full.len() - 1] {
            let reply = version_reply(limit);
            assert!(reply.len() <= limit, "{limit}: {}", reply.len());
        }
        assert!(version_reply(full.len() - 1).len() > 4);
    }

    /// A device with one doorbell eventfd per queue in region 0, a dword apart; queue 0 and 1
    /// share one, as sub-regions may.
    struct Doorbells(Vec<OwnedFd>);

    impl Doorbells {
        fn new(queues: usize) -> Doorbells {
            Doorbells(
                (0..queues)
                    .map(|_| {
                        // SAFETY: eventfd takes no pointer; the fd it returns is new and ours.
                        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
                        assert!(fd >= 0);
                        // SAFETY: see above.
                        unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) }
                    })
                    .collect(),
            )
        }
    }

    impl Device for Doorbells {
        fn regions(&self) -> Vec<RegionInfo> {
            vec![RegionInfo {
                index: 0,
                size: 0x1000,
                readable: true,
                writable: true,
                mmap: None,
            }]
        }
        fn irqs(&self) -> Vec<crate::device::IrqInfo> {
            Vec::new()
        }
        fn region_read(&mut self, _: u32, _: u64, _: &mut [u8]) -> Result<(), DeviceError> {
            Ok(())
        }
        fn region_write(&mut self, _: u32, _: u64, _: &[u8]) -> Result<(), DeviceError> {
            Ok(())
        }
        fn region_io_fds(&self, _: u32) -> Result<Vec<crate::device::IoFd<'_>>, DeviceError> {
            Ok((0..self.0.len())
                .map(|queue| crate::device::IoFd {
                    offset: 4 * queue as u64,
                    size: 2,
                    fd: self.0[queue.saturating_sub(1)].as_fd(),
                    datamatch: None,
                })
                .collect())
        }
        fn set_irqs(&mut self, _: u32, _: IrqAction) -> Result<(), DeviceError> {
            Ok(())
        }
        fn dma_mapped(&mut self, _: u64, _: u64) {}
        fn dma_unmapping(&mut self, _: u64, _: u64) {}
        fn reset(&mut self) {}
        fn event_fds(&self) -> Vec<std::os::fd::BorrowedFd<'_>> {
            Vec::new()
        }
        fn event_ready(&mut self, _: usize) {}
    }

    fn le32(body: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(body[at..at + 4].try_into().unwrap())
    }

    /// (sub-regions listed, fds sent, fd index of each sub-region)
    fn io_fds(queues: usize, max_fds: usize) -> (u32, usize, Vec<u32>) {
        let device = Doorbells::new(queues);
        let reply = io_fds_reply(&device, &device.regions(), 0, u32::MAX, max_fds).unwrap();
        let count = le32(&reply.body, 12);
        let entry = size_of::<IoFdSubRegion>();
        assert_eq!(le32(&reply.body, 0) as usize, reply.body.len(), "argsz");
        assert_eq!(reply.body.len(), 16 + entry * count as usize);
        let indices = (0..count as usize)
            .map(|i| le32(&reply.body, 16 + i * entry + 16))
            .collect();
        (count, reply.fds.len(), indices)
    }

    #[test]
    fn io_fds_never_exceed_the_clients_max_msg_fds() {
        // 18 doorbells in 17 eventfds (queues 0 and 1 share one): 16 eventfds fit, which cover
        // 17 sub-regions; the last is left to REGION_WRITE.
        let (count, fds, indices) = io_fds(18, 16);
        assert_eq!((count, fds), (17, 16));
        assert_eq!(indices[..3], [0, 0, 1]);
        assert_eq!(indices[16], 15);
        let (count, fds, _) = io_fds(66, 16);
        assert_eq!((count, fds), (17, 16));
        // A client that did not say how many it takes gets one.
        let (count, fds, indices) = io_fds(18, 1);
        assert_eq!((count, fds, indices), (2, 1, vec![0, 0]));
        let (count, fds, _) = io_fds(4, 16);
        assert_eq!((count, fds), (4, 3));
    }

    #[test]
    fn a_short_io_fds_request_learns_the_size_of_what_fits() {
        let device = Doorbells::new(18);
        let reply = io_fds_reply(&device, &device.regions(), 0, 16, 16).unwrap();
        assert_eq!(reply.body.len(), 16);
        assert_eq!(
            le32(&reply.body, 0) as usize,
            16 + 17 * size_of::<IoFdSubRegion>()
        );
        assert_eq!(le32(&reply.body, 12), 17);
        assert!(reply.fds.is_empty());
    }
}
