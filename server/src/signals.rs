//! The server's signal policy, all in one place:
//!
//! | signal | effect |
//! |---|---|
//! | SIGINT, SIGTERM | stop: release the client, remove the socket, exit 0 |
//! | SIGHUP | reopen `--log-file` (logrotate moves the file, then sends SIGHUP) |
//! | SIGUSR1, SIGUSR2 | logged and ignored |
//! | SIGPIPE | ignored: a peer that went away is a write error on its socket |
//!
//! Every other signal keeps its default disposition.

use std::io;

use signal_hook::consts::{SIGHUP, SIGINT, SIGPIPE, SIGTERM, SIGUSR1, SIGUSR2};
use signal_hook_mio::v1_0::Signals;

/// What the main loop does about a signal it received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalAction {
    Stop,
    ReopenLog,
    Ignore,
}

/// The signals the main loop receives as events.
pub const HANDLED: [i32; 5] = [SIGINT, SIGTERM, SIGHUP, SIGUSR1, SIGUSR2];

/// Installs the policy: SIGPIPE ignored, the others turned into events read from the result.
pub fn install() -> io::Result<Signals> {
    // SAFETY: setting a signal's disposition to SIG_IGN installs no handler code.
    if unsafe { libc::signal(SIGPIPE, libc::SIG_IGN) } == libc::SIG_ERR {
        return Err(io::Error::last_os_error());
    }
    Signals::new(HANDLED)
}

pub fn action(signal: i32) -> SignalAction {
    match signal {
        SIGINT | SIGTERM => SignalAction::Stop,
        SIGHUP => SignalAction::ReopenLog,
        _ => SignalAction::Ignore,
    }
}

pub fn name(signal: i32) -> &'static str {
    match signal {
        SIGINT => "SIGINT",
        SIGTERM => "SIGTERM",
        SIGHUP => "SIGHUP",
        SIGUSR1 => "SIGUSR1",
        SIGUSR2 => "SIGUSR2",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_handled_signal_has_its_action() {
        assert_eq!(action(SIGINT), SignalAction::Stop);
        assert_eq!(action(SIGTERM), SignalAction::Stop);
        assert_eq!(action(SIGHUP), SignalAction::ReopenLog);
        assert_eq!(action(SIGUSR1), SignalAction::Ignore);
        assert_eq!(action(SIGUSR2), SignalAction::Ignore);
        assert!(HANDLED.iter().all(|s| name(*s) != "other"));
    }
}
