//! The main loop: one mio `Poll` watching the listening socket, the current client, the device's
//! own fds and the stop signals. One client at a time; after it leaves, the device is reset, its
//! DMA and IRQ fds are dropped, and the next client on the same path is served.

use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;

use mio::net::UnixListener;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1, SIGUSR2};
use signal_hook_mio::v1_0::Signals;
use slog::{debug, info, warn, Logger};
use zerocopy::IntoBytes;

use crate::connection::{Connection, Incoming, ReadOutcome};
use crate::device::{Device, DmaMemory, IrqAction};
use crate::dispatch::{handle, notify_device, Reply, RequestError, Session};
use crate::dma::DmaTable;
use crate::message::{decode_request, DecodeError};
use crate::protocol::{Command, Header, FLAG_ERROR, FLAG_TYPE_REPLY, HEADER_SIZE};
use crate::socket_path::{BoundSocket, SocketPathError};

const LISTENER: Token = Token(0);
const CLIENT: Token = Token(1);
const SIGNALS: Token = Token(2);
/// Signals that stop the server.
pub const STOP_SIGNALS: [i32; 2] = [SIGINT, SIGTERM];
/// Signals an operator may send by habit or by mistake: by default they would end the process
/// without cleanup, so they are caught and logged. (SIGPIPE needs nothing: the Rust runtime
/// ignores it, and a closed peer shows up as EPIPE.)
pub const HARMLESS_SIGNALS: [i32; 3] = [SIGHUP, SIGUSR1, SIGUSR2];
const WAKER: Token = Token(3);
const FIRST_DEVICE_FD: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("socket: {0}")]
    Socket(#[from] SocketPathError),
    #[error("event loop: {0}")]
    Poll(io::Error),
    #[error("signals: {0}")]
    Signals(io::Error),
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
}

/// Why a client's connection ended.
enum Disconnect {
    Closed,
    ClosedMidMessage,
    Garbled(String),
    Io(io::Error),
}

pub struct Server<D: Device> {
    socket: BoundSocket,
    listener: UnixListener,
    poll: Poll,
    signals: Signals,
    waker: Arc<Waker>,
    device: D,
    dma: DmaTable,
    client: Option<Client>,
    log: Logger,
}

impl<D: Device> Server<D> {
    /// Binds `socket_path` and prepares to serve `device`, whose DMA view is `memory`.
    pub fn new(
        socket_path: &Path,
        device: D,
        memory: DmaMemory,
        log: Logger,
    ) -> Result<Server<D>, ServerError> {
        let (socket, listener) = BoundSocket::bind(socket_path)?;
        let mut listener = UnixListener::from_std(listener);
        let poll = Poll::new().map_err(ServerError::Poll)?;
        let registry = poll.registry();
        registry
            .register(&mut listener, LISTENER, Interest::READABLE)
            .map_err(ServerError::Poll)?;
        let mut signals = Signals::new(STOP_SIGNALS.iter().chain(&HARMLESS_SIGNALS))
            .map_err(ServerError::Signals)?;
        registry
            .register(&mut signals, SIGNALS, Interest::READABLE)
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
        info!(log, "listening"; "socket" => %socket.path().display());
        Ok(Server {
            socket,
            listener,
            poll,
            signals,
            waker,
            device,
            dma: DmaTable::new(memory),
            client: None,
            log,
        })
    }

    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(Arc::clone(&self.waker))
    }

    /// Serves clients until SIGINT, SIGTERM or a `ShutdownHandle` stops it; the socket file is
    /// removed when the server is dropped.
    pub fn run(mut self) -> Result<(), ServerError> {
        let mut events = Events::with_capacity(64);
        loop {
            match self.poll.poll(&mut events, None) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ServerError::Poll(e)),
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(),
                    CLIENT => self.serve_client(),
                    SIGNALS => {
                        let pending: Vec<i32> = self.signals.pending().collect();
                        for &signal in &pending {
                            if !STOP_SIGNALS.contains(&signal) {
                                info!(self.log, "signal ignored"; "signal" => signal);
                            }
                        }
                        if let Some(signal) = pending.iter().find(|s| STOP_SIGNALS.contains(s)) {
                            info!(self.log, "stopping"; "signal" => signal);
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
        }
    }

    fn stop(mut self) -> Result<(), ServerError> {
        self.release_client(Disconnect::Closed);
        info!(self.log, "stopped"; "socket" => %self.socket.path().display());
        Ok(())
    }

    fn accept(&mut self) {
        while self.client.is_none() {
            match self.listener.accept() {
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
            self.disconnect(reason);
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
                ReadOutcome::Framing(e) => return Err(Disconnect::Garbled(e.to_string())),
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
                    let result = if fds_truncated {
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
        let command = Command::from_u16(header.command.get()).map_or("unknown", Command::name);
        let id = header.message_id.get();
        let no_reply = header.no_reply();
        let error = result.as_ref().err().map_or(0, RequestError::errno);
        match &result {
            Ok(reply) => debug!(self.log, "message";
                "command" => command, "id" => id, "size" => body_len,
                "reply_size" => reply.body.len(), "reply_fds" => reply.fds.len(), "no_reply" => no_reply, "result" => "ok"),
            Err(e) if no_reply => warn!(self.log, "posted message failed";
                "command" => command, "id" => id, "size" => body_len, "errno" => error, "error" => %e),
            Err(e) => debug!(self.log, "message";
                "command" => command, "id" => id, "size" => body_len, "no_reply" => no_reply,
                "result" => "error", "errno" => error, "error" => %e),
        }
        if header.command.get() == Command::DeviceReset as u16 && result.is_ok() {
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
                warn!(self.log, "client disconnected"; "reason" => "garbled header", "error" => why)
            }
            Disconnect::Io(e) => {
                warn!(self.log, "client disconnected"; "reason" => "socket error", "error" => %e)
            }
        }
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
