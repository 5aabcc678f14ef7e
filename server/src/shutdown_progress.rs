//! Where the process is on its way out. Each step that can block in the kernel (a backend that
//! does not answer, a file system slow to free or write back a file) is entered explicitly and
//! logged, so that the shutdown watchdog can name the step it timed out in, and a slow exit in
//! a log shows which step took the time.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use slog::{debug, Logger};

/// A step of the exit, in the order the main thread takes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShutdownStep {
    /// The main loop releases the client: the device reset completes the requests in flight.
    /// A stop signal finds the process here.
    ReleasingClient,
    /// The iothreads are told to stop and joined.
    StoppingIothreads,
    /// fdatasync of a LUN's disk, so that every write acknowledged to the guest is on stable
    /// storage, as QEMU flushes its drives when it closes them.
    FlushingDisk { lun: u16, path: PathBuf },
    /// The disk files are closed (a FUSE or NFS close waits for its server; the last close of a
    /// deleted file frees its blocks).
    ClosingDisks,
}

impl ShutdownStep {
    pub fn name(&self) -> &'static str {
        match self {
            ShutdownStep::ReleasingClient => "releasing the client",
            ShutdownStep::StoppingIothreads => "stopping the iothreads",
            ShutdownStep::FlushingDisk { .. } => "flushing a disk",
            ShutdownStep::ClosingDisks => "closing the disks",
        }
    }

    /// The LUN the step works on, if it works on one.
    pub fn lun(&self) -> Option<u16> {
        match self {
            ShutdownStep::FlushingDisk { lun, .. } => Some(*lun),
            _ => None,
        }
    }

    /// The file the step works on, if it works on one.
    pub fn path(&self) -> Option<String> {
        match self {
            ShutdownStep::FlushingDisk { path, .. } => Some(path.display().to_string()),
            _ => None,
        }
    }
}

/// The current step and when it began, shared by the main thread (which moves it on) and the
/// shutdown watchdog (which reads it when the deadline passes).
#[derive(Clone)]
pub struct ShutdownProgress(Arc<Mutex<(ShutdownStep, Instant)>>);

impl Default for ShutdownProgress {
    fn default() -> ShutdownProgress {
        ShutdownProgress(Arc::new(Mutex::new((
            ShutdownStep::ReleasingClient,
            Instant::now(),
        ))))
    }
}

impl ShutdownProgress {
    /// Moves on to `step`, with a debug record of the step left and how long it took.
    pub fn enter(&self, step: ShutdownStep, log: &Logger) {
        let mut current = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let (left, began) = std::mem::replace(&mut *current, (step, Instant::now()));
        debug!(log, "shutdown step";
            "step" => current.0.name(), "lun" => current.0.lun(), "path" => current.0.path(),
            "after" => left.name(), "after_ms" => began.elapsed().as_millis());
    }

    /// The last step is over: a debug record of how long it took.
    pub fn finish(&self, log: &Logger) {
        let (step, in_step) = self.current();
        debug!(log, "shutdown steps done"; "after" => step.name(), "after_ms" => in_step.as_millis());
    }

    /// The current step, and how long the process has been in it.
    pub fn current(&self) -> (ShutdownStep, Duration) {
        let current = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        (current.0.clone(), current.1.elapsed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_starts_in_the_main_loop_and_each_step_replaces_the_last() {
        let log = Logger::root(slog::Discard, slog::o!());
        let progress = ShutdownProgress::default();
        assert_eq!(progress.current().0, ShutdownStep::ReleasingClient);
        let flushing = ShutdownStep::FlushingDisk {
            lun: 3,
            path: PathBuf::from("/images/a.raw"),
        };
        progress.clone().enter(flushing.clone(), &log);
        let (step, _) = progress.current();
        assert_eq!(step, flushing);
        assert_eq!(
            (step.name(), step.lun(), step.path().as_deref()),
            ("flushing a disk", Some(3), Some("/images/a.raw"))
        );
        progress.enter(ShutdownStep::ClosingDisks, &log);
        assert_eq!(progress.current().0.lun(), None);
    }
}
