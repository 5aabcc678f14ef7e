//! The main loop: one mio `Poll` watching the listening socket, the current client, the device's
//! own fds and the application's (`MainLoopHook`). One client at a time: another one is refused
//! while a client is attached; after it leaves, the device is reset, its DMA and IRQ fds are
//! dropped, and the next client on the same path is served. A client that does not complete
//! VERSION within `HANDSHAKE_TIMEOUT` is sent away, so that a connection that never speaks
//! cannot keep every later client, QEMU included, out.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::UnixListener;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use slog::{debug, info, warn, Logger};
use zerocopy::IntoBytes;

use crate::connection::{Connection, Incoming, ReadOutcome, MAX_RECV_FDS};
use crate::device::{Device, DmaMemory, IrqAction};
use crate::dispatch::{handle, notify_device, Reply, RequestError, Session};
use crate::dma::DmaTable;
use crate::message::{decode_request, DecodeError, FramingError};
use crate::protocol::{Header, VfioUserCommand, FLAG_ERROR, FLAG_TYPE_REPLY, HEADER_SIZE};
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
                    CLIENT => self.serve_client(),
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
                if let Err(reason) = self.serve_messages() {
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
    fn serve_client(&mut self) {
        if let Err(reason) = self.serve_messages() {
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

    fn serve_messages(&mut self) -> Result<(), Disconnect> {
        loop {
            let Some(client) = self.client.as_mut() else {
                return Ok(());
            };
            client.connection.flush().map_err(Disconnect::Io)?;
            if client.connection.has_pending_output() {
                // Read no more until the client takes its replies.
                return Ok(());
            }
            match client.connection.read_message().map_err(Disconnect::Io)? {
                ReadOutcome::WouldBlock => return Ok(()),
                ReadOutcome::Closed { partial: false } => return Err(Disconnect::Closed),
                ReadOutcome::Closed { partial: true } => return Err(Disconnect::ClosedMidMessage),
                ReadOutcome::Framing(e) => return Err(Disconnect::Garbled(e)),
                ReadOutcome::Incoming(Incoming::Oversized { header, body_len }) => {
                    self.finish(
                        &header,
                        body_len,
                        Err(DecodeError::TooLarge(body_len).into()),
                    );
                }
                ReadOutcome::Incoming(Incoming::Message {
                    header,
                    body,
                    fds,
                    fds_truncated,
                }) => {
                    let result = if fds_truncated && fds.len() < MAX_RECV_FDS {
                        // There was room for more fds than came: the kernel could not install
                        // them, the process is out of descriptors.
                        Err(RequestError::FdsExhausted {
                            received: fds.len(),
                        })
                    } else if fds_truncated {
                        Err(DecodeError::TooManyFds {
                            got: fds.len(),
                            allowed: crate::protocol::MAX_MSG_FDS,
                        }
                        .into())
                    } else {
                        decode_request(&header, &body, fds)
                            .map_err(RequestError::from)
                            .and_then(|request| {
                                handle(
                                    &mut self.device,
                                    &mut self.dma,
                                    &mut client.session,
                                    request,
                                    body.len(),
                                )
                            })
                    };
                    self.finish(&header, body.len(), result);
                }
            }
        }
    }

    /// Logs the outcome of one message and queues its reply, unless the client asked for none.
    fn finish(&mut self, header: &Header, body_len: usize, result: Result<Reply, RequestError>) {
        let command = VfioUserCommand::from_u16(header.command.get())
            .map_or("unknown", VfioUserCommand::name);
        let id = header.message_id.get();
        let no_reply = header.no_reply();
        let error = result.as_ref().err().map_or(0, RequestError::errno);
        match &result {
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
        if header.command.get() == VfioUserCommand::DeviceReset as u16 && result.is_ok() {
            info!(self.log, "device reset"; "by" => "client");
        }
        if no_reply {
            return;
        }
        let (flags, body, fds) = match result {
            Ok(reply) => (FLAG_TYPE_REPLY, reply.body, reply.fds),
            Err(_) => (FLAG_TYPE_REPLY | FLAG_ERROR, Vec::new(), Vec::new()),
        };
        let reply_header = Header {
            message_id: header.message_id,
            command: header.command,
            message_size: ((HEADER_SIZE + body.len()) as u32).into(),
            flags: flags.into(),
            error: (error as u32).into(),
        };
        if let Some(client) = self.client.as_mut() {
            client
                .connection
                .queue([reply_header.as_bytes(), &body].concat(), fds);
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
        if let Err(e) = self.dma.clear(|change| notify_device(device, change)) {
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
