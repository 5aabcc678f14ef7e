//! Where the process is on its way out. Each step that can block in the kernel (a backend that
//! does not answer, a file system slow to free or write back a file) is entered explicitly and
//! logged, so that the shutdown watchdog can name the step it timed out in, and a slow exit in
//! a log shows which step took the time.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use slog::{debug, Logger, Record, Serializer, KV};

/// A step of the exit, in the order the main thread takes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShutdownStep {
    /// No stop yet: the main loop has not read the stop signal (if the watchdog finds the
    /// process here, the main loop is stuck in something else).
    Serving,
    /// The main loop releases the client: the device reset completes the requests in flight.
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
            ShutdownStep::Serving => "serving",
            ShutdownStep::ReleasingClient => "releasing the client",
            ShutdownStep::StoppingIothreads => "stopping the iothreads",
            ShutdownStep::FlushingDisk { .. } => "flushing a disk",
            ShutdownStep::ClosingDisks => "closing the disks",
        }
    }
}

/// `step`, and the `lun` and `path` of the disk it works on, if it works on one.
impl KV for ShutdownStep {
    fn serialize(&self, _record: &Record, serializer: &mut dyn Serializer) -> slog::Result {
        if let ShutdownStep::FlushingDisk { lun, path } = self {
            serializer.emit_arguments("path", &format_args!("{}", path.display()))?;
            serializer.emit_u16("lun", *lun)?;
        }
        serializer.emit_str("step", self.name())
    }
}

/// The current step and when it began, shared by the main thread (which moves it on) and the
/// shutdown watchdog (which reads it when the deadline passes).
#[derive(Clone)]
pub struct ShutdownProgress(Arc<Mutex<(ShutdownStep, Instant)>>);

impl Default for ShutdownProgress {
    fn default() -> ShutdownProgress {
        ShutdownProgress(Arc::new(Mutex::new((
            ShutdownStep::Serving,
            Instant::now(),
        ))))
    }
}

impl ShutdownProgress {
    /// Moves on to `step`, with a debug record of the step left and how long it took.
    pub fn enter(&self, step: ShutdownStep, log: &Logger) {
        let mut current = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let (left, began) = std::mem::replace(&mut *current, (step, Instant::now()));
        debug!(log, "shutdown step"; &current.0,
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
    fn each_step_replaces_the_last_and_names_its_disk() {
        let log = Logger::root(slog::Discard, slog::o!());
        let progress = ShutdownProgress::default();
        assert_eq!(progress.current().0, ShutdownStep::Serving);
        progress.clone().enter(ShutdownStep::ReleasingClient, &log);
        assert_eq!(progress.current().0, ShutdownStep::ReleasingClient);
        let flushing = ShutdownStep::FlushingDisk {
            lun: 3,
            path: PathBuf::from("/images/a.raw"),
        };
        progress.enter(flushing.clone(), &log);
        assert_eq!(progress.current().0, flushing);
        assert_eq!(
            fields(&flushing),
            "path=/images/a.raw lun=3 step=flushing a disk"
        );
        assert_eq!(
            fields(&ShutdownStep::ClosingDisks),
            "step=closing the disks"
        );
    }

    /// The fields `step` adds to a record, as `key=value` in order.
    fn fields(step: &ShutdownStep) -> String {
        struct Collect(Vec<String>);
        impl Serializer for Collect {
            fn emit_arguments(
                &mut self,
                key: slog::Key,
                value: &std::fmt::Arguments,
            ) -> slog::Result {
                self.0.push(format!("{key}={value}"));
                Ok(())
            }
        }
        let mut collect = Collect(Vec::new());
        let record = slog::record_static!(slog::Level::Debug, "");
        let args = format_args!("");
        step.serialize(&Record::new(&record, &args, slog::b!()), &mut collect)
            .unwrap();
        collect.0.join(" ")
    }
}
