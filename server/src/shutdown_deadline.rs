//! A bound on stopping. On SIGINT or SIGTERM the server completes the requests in flight before
//! it exits; a backend that never answers (a hung NFS mount, a dead multipath device) must not
//! keep the process and its socket alive forever. A watchdog thread hears the same signals,
//! and if the process is still there after the timeout it logs the step of the exit it is stuck
//! in (`shutdown_progress`) and the stuck requests, removes the socket, flushes the log and exits.
//!
//! A thread stuck in the kernel on such a backend (an io_uring submission or a pwrite into a
//! hung FUSE or NFS file) cannot run a signal handler, and the kernel may pick it for a signal
//! sent to the process. Every thread but the watchdog therefore blocks the signals the server
//! handles ([`block_handled_signals`], first thing in `main`), and the watchdog, which never
//! does I/O, receives them and runs the handler that wakes the main loop too.

use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use signal_hook::iterator::Signals;
use slog::{warn, Logger};

use crate::shutdown_progress::ShutdownProgress;
use crate::signals::HANDLED;
use signal_hook::consts::{SIGINT, SIGTERM};

/// Stuck requests listed one record each, at most; the rest are only counted.
const LISTED_REQUESTS: usize = 64;

/// The log's flush guard, shared so that the watchdog can flush before it exits.
pub type LogGuard = Arc<Mutex<Option<slog_async::AsyncGuard>>>;

/// What the watchdog needs to report and clean up.
pub struct ShutdownDeadline {
    pub timeout: Duration,
    /// The socket to remove; `None` when systemd handed it over.
    pub socket: Option<PathBuf>,
    /// Lists the requests in flight as (lun, tag).
    pub in_flight: Box<dyn Fn() -> Vec<(u16, u64)> + Send>,
    /// The step of the exit the main thread is in.
    pub progress: ShutdownProgress,
    pub log: Logger,
    pub log_guard: LogGuard,
}

impl ShutdownDeadline {
    /// Starts the watchdog thread; it waits for a stop signal and then for the timeout.
    pub fn arm(self) -> io::Result<()> {
        let mut signals = Signals::new([SIGINT, SIGTERM])?;
        std::thread::Builder::new()
            .name("shutdown-deadline".into())
            .spawn(move || {
                if let Err(error) = set_handled_signals(libc::SIG_UNBLOCK) {
                    warn!(self.log, "the shutdown watchdog cannot receive signals";
                        "error" => %error);
                }
                if signals.forever().next().is_some() {
                    std::thread::sleep(self.timeout);
                    self.expire();
                }
            })?;
        Ok(())
    }

    fn expire(self) -> ! {
        let stuck = (self.in_flight)();
        let (step, in_step) = self.progress.current();
        warn!(self.log, "shutdown timed out"; &step,
            "timeout_s" => self.timeout.as_secs(), "step_ms" => in_step.as_millis(),
            "requests" => stuck.len());
        for (lun, tag) in stuck.iter().take(LISTED_REQUESTS) {
            warn!(self.log, "request still in flight at exit"; "lun" => lun, "tag" => tag);
        }
        if let Some(socket) = &self.socket {
            if let Err(error) = std::fs::remove_file(socket) {
                if error.kind() != io::ErrorKind::NotFound {
                    warn!(self.log, "cannot remove the socket"; "socket" => %socket.display(),
                        "error" => %error);
                }
            }
        }
        drop(
            self.log_guard
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        std::process::exit(1);
    }
}

/// Blocks the signals the server handles in the calling thread and in every thread it starts
/// afterwards; the watchdog unblocks them for itself.
pub fn block_handled_signals() -> io::Result<()> {
    set_handled_signals(libc::SIG_BLOCK)
}

fn set_handled_signals(how: libc::c_int) -> io::Result<()> {
    // SAFETY: sigset_t is plain data that sigemptyset initialises before any other use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a live sigset_t; sigemptyset and sigaddset only write to it.
    unsafe {
        libc::sigemptyset(&mut set);
        for signal in HANDLED {
            libc::sigaddset(&mut set, signal);
        }
    }
    // SAFETY: `set` is initialised; the old mask is not asked for (null).
    let ret = unsafe { libc::pthread_sigmask(how, &set, std::ptr::null_mut()) };
    if ret != 0 {
        return Err(io::Error::from_raw_os_error(ret));
    }
    Ok(())
}
