//! The application's share of the main loop: the signals (`signals`) and the control socket
//! (`control_socket`, `control_commands`), behind one nested `Poll` whose fd the server watches.
//! While a control request waits (a `remove-disk` for its LUN's requests), a timer brings the
//! main loop back here to check on it; the main loop never blocks for it.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::Path;
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use signal_hook_mio::v1_0::Signals;
use slog::{info, warn, Logger};
use vmm_sys_util::timerfd::TimerFd;

use crate::control_commands::{ControlCommands, Function};
use crate::control_socket::ControlSocket;
use crate::logging::LogControl;
use crate::shutdown_progress::{ShutdownProgress, ShutdownStep};
use crate::signals::{self, SignalAction};
use vfio_user_server::{Flow, MainLoopHook, ServerStatus};
use vfio_user_server::{SocketAccess, SocketPathError};

const SIGNALS: Token = Token(0);
const WAIT_TIMER: Token = Token(1);
const FIRST_CONTROL: usize = 2;
/// How often a waiting control request is checked on.
const WAIT_CHECK: Duration = Duration::from_millis(2);

#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error("signals: {0}")]
    Signals(io::Error),
    #[error("event loop: {0}")]
    Poll(io::Error),
    #[error("--control-socket {0}")]
    ControlSocket(SocketPathError),
    #[error("timer: {0}")]
    Timer(io::Error),
}

pub struct Operator {
    poll: Poll,
    events: Events,
    signals: Signals,
    control: Option<ControlSocket>,
    commands: ControlCommands,
    /// Armed while a control request waits.
    wait_timer: TimerFd,
    wait_timer_armed: bool,
    log_control: LogControl,
    /// Moved on when a stop signal is read, for the shutdown watchdog.
    progress: ShutdownProgress,
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
        progress: ShutdownProgress,
        log: Logger,
    ) -> Result<Operator, OperatorError> {
        let poll = Poll::new().map_err(OperatorError::Poll)?;
        poll.registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)
            .map_err(OperatorError::Poll)?;
        let wait_timer = TimerFd::new().map_err(|e| OperatorError::Timer(e.into()))?;
        // SAFETY: fcntl on the timer's own descriptor, adding O_NONBLOCK, so that reading a
        // timer that a disarm raced with returns EAGAIN instead of blocking the main loop.
        if unsafe { libc::fcntl(wait_timer.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) } < 0 {
            return Err(OperatorError::Timer(io::Error::last_os_error()));
        }
        poll.registry()
            .register(
                &mut SourceFd(&wait_timer.as_raw_fd()),
                WAIT_TIMER,
                Interest::READABLE,
            )
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
            wait_timer,
            wait_timer_armed: false,
            log_control,
            progress,
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
                    self.progress
                        .enter(ShutdownStep::ReleasingClient, &self.log);
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

    /// Sends the replies whose wait is over, and keeps the timer armed while others wait.
    fn finish_waits(&mut self, device: &mut Function, status: ServerStatus) {
        if !self.commands.waiting() {
            return self.arm_wait_timer(false);
        }
        let replies = self.commands.pending_replies(device);
        if let Some(control) = self.control.as_mut() {
            let commands = &mut self.commands;
            for (connection, reply) in replies {
                control.deliver(self.poll.registry(), connection, &reply, |id, line| {
                    commands.reply(device, status, id, line)
                });
            }
        }
        self.arm_wait_timer(self.commands.waiting());
    }

    fn arm_wait_timer(&mut self, armed: bool) {
        if armed == self.wait_timer_armed {
            return;
        }
        let result = if armed {
            self.wait_timer.reset(WAIT_CHECK, Some(WAIT_CHECK))
        } else {
            self.wait_timer.clear()
        };
        match result {
            Ok(()) => self.wait_timer_armed = armed,
            Err(e) => warn!(self.log, "wait timer"; "error" => %e),
        }
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
                self.finish_waits(device, status);
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
                if token == WAIT_TIMER {
                    // Expirations only wake us; what waits is checked once the events are done.
                    let _ = self.wait_timer.wait();
                    continue;
                }
                let Some(control) = self.control.as_mut() else {
                    continue;
                };
                let commands = &mut self.commands;
                let served = control.ready(self.poll.registry(), token, |id, line| {
                    commands.reply(device, status, id, line)
                });
                if let Err(e) = served {
                    warn!(self.log, "control socket"; "error" => %e);
                }
            }
        }
    }
}
