//! The application's share of the main loop: the signals (`signals`) and the control socket
//! (`control_socket`, `control_commands`), behind one nested `Poll` whose fd the server watches.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::Path;
use std::time::Duration;

use mio::{Events, Interest, Poll, Token};
use signal_hook_mio::v1_0::Signals;
use slog::{info, warn, Logger};

use crate::control_commands::{ControlCommands, Function};
use crate::control_socket::ControlSocket;
use crate::logging::LogControl;
use crate::signals::{self, SignalAction};
use vfio_user_server::{Flow, MainLoopHook, ServerStatus};
use vfio_user_server::{SocketAccess, SocketPathError};

const SIGNALS: Token = Token(0);
const FIRST_CONTROL: usize = 1;

#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error("signals: {0}")]
    Signals(io::Error),
    #[error("event loop: {0}")]
    Poll(io::Error),
    #[error("--control-socket {0}")]
    ControlSocket(SocketPathError),
}

pub struct Operator {
    poll: Poll,
    events: Events,
    signals: Signals,
    control: Option<ControlSocket>,
    commands: ControlCommands,
    log_control: LogControl,
    log: Logger,
}

impl Operator {
    /// Takes over the signals `signals::install` turned into events, and binds the control
    /// socket, if one is asked for.
    pub fn new(
        mut signals: Signals,
        control_socket: Option<&Path>,
        access: &SocketAccess,
        commands: ControlCommands,
        log_control: LogControl,
        log: Logger,
    ) -> Result<Operator, OperatorError> {
        let poll = Poll::new().map_err(OperatorError::Poll)?;
        poll.registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)
            .map_err(OperatorError::Poll)?;
        let control = control_socket
            .map(|path| {
                let socket = ControlSocket::bind(path, access, poll.registry(), FIRST_CONTROL)
                    .map_err(OperatorError::ControlSocket)?;
                info!(log, "control socket"; "socket" => %path.display());
                Ok(socket)
            })
            .transpose()?;
        Ok(Operator {
            poll,
            events: Events::with_capacity(32),
            signals,
            control,
            commands,
            log_control,
            log,
        })
    }

    /// Acts on the pending signals; `Flow::Stop` for a stop signal.
    fn signals(&mut self) -> Flow {
        let pending: Vec<i32> = self.signals.pending().collect();
        let mut flow = Flow::Continue;
        for signal in pending {
            let name = signals::name(signal);
            match signals::action(signal) {
                SignalAction::Stop => {
                    info!(self.log, "stopping"; "signal" => name);
                    flow = Flow::Stop;
                }
                SignalAction::ReopenLog => {
                    let reopened = self.log_control.reopen();
                    info!(self.log, "log reopened"; "signal" => name, "file" => reopened);
                }
                SignalAction::Ignore => info!(self.log, "signal ignored"; "signal" => name),
            }
        }
        flow
    }
}

impl MainLoopHook<Function> for Operator {
    fn fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the epoll fd belongs to `self.poll`, which the borrow of `self` outlives.
        unsafe { BorrowedFd::borrow_raw(self.poll.as_raw_fd()) }
    }

    fn ready(&mut self, device: &mut Function, status: ServerStatus) -> Flow {
        let mut flow = Flow::Continue;
        loop {
            if let Err(e) = self.poll.poll(&mut self.events, Some(Duration::ZERO)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    warn!(self.log, "operator event loop failed"; "error" => %e);
                    return flow;
                }
            }
            if self.events.is_empty() {
                return flow;
            }
            let tokens: Vec<Token> = self.events.iter().map(|event| event.token()).collect();
            for token in tokens {
                if token == SIGNALS {
                    if self.signals() == Flow::Stop {
                        flow = Flow::Stop;
                    }
                    continue;
                }
                let Some(control) = self.control.as_mut() else {
                    continue;
                };
                let commands = &mut self.commands;
                let served = control.ready(self.poll.registry(), token, |line| {
                    commands.reply(device, status, line)
                });
                if let Err(e) = served {
                    warn!(self.log, "control socket"; "error" => %e);
                }
            }
        }
    }
}
