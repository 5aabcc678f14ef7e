//! slog setup: JSON or terminal records, to stderr or a file, through a bounded asynchronous
//! drain that drops records when full, so that logging never blocks the thread serving the socket.
//!
//! The level can change at run time (`ctl set-log-level`), the file is reopened on request
//! (SIGHUP, for logrotate), and a sink that fails (a full disk, `/dev/full`) costs the records
//! it could not take, which are counted, never the logging thread: every record is tried again.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use slog::{o, Drain, Logger, OwnedKVList, Record};

use crate::cli::{LogFormat, LogLevel};

/// Records waiting for the logging thread; past this, new records are dropped (and counted).
const CHANNEL_SIZE: usize = 4096;

#[derive(Debug, thiserror::Error)]
#[error("--log-file {path}: {source}")]
pub struct LogFileError {
    path: PathBuf,
    source: io::Error,
}

impl LogLevel {
    fn to_slog(self) -> slog::Level {
        match self {
            LogLevel::Error => slog::Level::Error,
            LogLevel::Warn => slog::Level::Warning,
            LogLevel::Info => slog::Level::Info,
            LogLevel::Debug => slog::Level::Debug,
            LogLevel::Trace => slog::Level::Trace,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

/// What the rest of the program may change about the log while it runs.
#[derive(Clone)]
pub struct LogControl {
    level: Arc<AtomicUsize>,
    reopen: Arc<AtomicBool>,
    dropped: Arc<AtomicU64>,
    file: Option<PathBuf>,
}

impl LogControl {
    pub fn set_level(&self, level: LogLevel) {
        self.level
            .store(level.to_slog().as_usize(), Ordering::Relaxed);
    }

    pub fn level(&self) -> LogLevel {
        let current = self.level.load(Ordering::Relaxed);
        [
            LogLevel::Error,
            LogLevel::Warn,
            LogLevel::Info,
            LogLevel::Debug,
            LogLevel::Trace,
        ]
        .into_iter()
        .find(|level| level.to_slog().as_usize() == current)
        .unwrap_or(LogLevel::Info)
    }

    /// The log file is opened again by path before the next record is written; false when the
    /// log goes to stderr.
    pub fn reopen(&self) -> bool {
        self.reopen.store(true, Ordering::Relaxed);
        self.file.is_some()
    }

    /// Records the sink could not take since the start.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }
}

/// The root logger, its control, and the guard that flushes it when dropped (keep it alive in
/// main).
pub fn build(
    format: LogFormat,
    level: LogLevel,
    file: Option<&Path>,
) -> Result<(Logger, LogControl, slog_async::AsyncGuard), LogFileError> {
    let output = match file {
        Some(path) => Output::File(open(path)?),
        None => Output::Stderr,
    };
    let control = LogControl {
        level: Arc::new(AtomicUsize::new(level.to_slog().as_usize())),
        reopen: Arc::new(AtomicBool::new(false)),
        dropped: Arc::new(AtomicU64::new(0)),
        file: file.map(Path::to_path_buf),
    };
    let buffer = RecordBuffer::default();
    let format: Box<dyn Drain<Ok = (), Err = io::Error> + Send> = match format {
        LogFormat::Json => Box::new(slog_json::Json::default(buffer.clone())),
        LogFormat::Term => {
            let decorator = slog_term::PlainDecorator::new(buffer.clone());
            Box::new(slog_term::FullFormat::new(decorator).build())
        }
    };
    let sink = Sink {
        format,
        buffer,
        output: Mutex::new(output),
        control: control.clone(),
    };
    let (drain, guard) = slog_async::Async::new(sink)
        .chan_size(CHANNEL_SIZE)
        .overflow_strategy(slog_async::OverflowStrategy::DropAndReport)
        .thread_name("log".into())
        .build_with_guard();
    // Filtering in front of the channel keeps records below the level from being serialised on
    // the socket and queue threads at all (dropped trace records cost ~40% of a request).
    let filtered = LevelFilter {
        level: Arc::clone(&control.level),
        drain,
    };
    Ok((Logger::root(filtered.fuse(), o!()), control, guard))
}

fn open(path: &Path) -> Result<File, LogFileError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| LogFileError {
            path: path.to_path_buf(),
            source,
        })
}

struct LevelFilter<D> {
    level: Arc<AtomicUsize>,
    drain: D,
}

impl<D: Drain> Drain for LevelFilter<D> {
    type Ok = Option<D::Ok>;
    type Err = D::Err;

    fn log(&self, record: &Record, values: &OwnedKVList) -> Result<Self::Ok, Self::Err> {
        if self.is_enabled(record.level()) {
            self.drain.log(record, values).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Lets a hot path (a queue's pass, the vfio-user loop's per-message debug record) ask
    /// once whether a level is logged instead of building its records.
    fn is_enabled(&self, level: slog::Level) -> bool {
        level.as_usize() <= self.level.load(Ordering::Relaxed) && self.drain.is_enabled(level)
    }
}

enum Output {
    Stderr,
    File(File),
}

/// The bytes of the record being formatted, so that it reaches the output in one write.
#[derive(Clone, Default)]
struct RecordBuffer(Arc<Mutex<Vec<u8>>>);

impl Write for RecordBuffer {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Formats each record whole, then writes it; runs on the logging thread only.
struct Sink {
    format: Box<dyn Drain<Ok = (), Err = io::Error> + Send>,
    buffer: RecordBuffer,
    output: Mutex<Output>,
    control: LogControl,
}

impl Sink {
    fn write(&self, output: &mut Output, bytes: &[u8]) -> io::Result<()> {
        match output {
            Output::Stderr => io::stderr().lock().write_all(bytes),
            Output::File(file) => file.write_all(bytes),
        }
    }

    fn reopen_if_asked(&self, output: &mut Output) -> Option<String> {
        if !self.control.reopen.swap(false, Ordering::Relaxed) {
            return None;
        }
        let path = self.control.file.as_ref()?;
        match open(path) {
            Ok(file) => {
                *output = Output::File(file);
                None
            }
            // The old file keeps the records; the error goes into it.
            Err(e) => Some(e.to_string()),
        }
    }
}

impl Drain for Sink {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record, values: &OwnedKVList) -> Result<(), slog::Never> {
        let mut output = self.output.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(error) = self.reopen_if_asked(&mut output) {
            let line = format!("vfio-user-scsi: cannot reopen the log: {error}\n");
            let _ = self.write(&mut output, line.as_bytes());
        }
        let bytes = {
            let mut buffer = self.buffer.0.lock().unwrap_or_else(PoisonError::into_inner);
            buffer.clear();
            drop(buffer);
            let formatted = self.format.log(record, values);
            let mut buffer = self.buffer.0.lock().unwrap_or_else(PoisonError::into_inner);
            match formatted {
                Ok(()) => std::mem::take(&mut *buffer),
                Err(_) => Vec::new(),
            }
        };
        if bytes.is_empty() || self.write(&mut output, &bytes).is_err() {
            self.control.dropped.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use slog::info;

    fn flushed(build: (Logger, LogControl, slog_async::AsyncGuard)) -> LogControl {
        let (log, control, guard) = build;
        info!(log, "one"; "n" => 1);
        drop(log);
        drop(guard);
        control
    }

    #[test]
    fn a_failing_sink_counts_dropped_records_and_keeps_going() {
        let (log, control, guard) = build(
            LogFormat::Json,
            LogLevel::Info,
            Some(Path::new("/dev/full")),
        )
        .unwrap();
        for n in 0..3 {
            info!(log, "record"; "n" => n);
        }
        drop(log);
        drop(guard);
        assert_eq!(control.dropped(), 3);
    }

    #[test]
    fn reopen_writes_to_a_new_file_at_the_same_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let (log, control, guard) = build(LogFormat::Json, LogLevel::Info, Some(&path)).unwrap();
        info!(log, "before");
        std::thread::sleep(std::time::Duration::from_millis(100));
        std::fs::rename(&path, dir.path().join("log.1")).unwrap();
        assert!(control.reopen());
        info!(log, "after");
        drop(log);
        drop(guard);
        let old = std::fs::read_to_string(dir.path().join("log.1")).unwrap();
        let new = std::fs::read_to_string(&path).unwrap();
        assert!(old.contains("before") && !old.contains("after"), "{old}");
        assert!(new.contains("after") && !new.contains("before"), "{new}");
    }

    #[test]
    fn the_level_changes_at_run_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let (log, control, guard) = build(LogFormat::Term, LogLevel::Warn, Some(&path)).unwrap();
        slog::debug!(log, "hidden");
        assert!(!log.is_debug_enabled());
        control.set_level(LogLevel::Debug);
        assert_eq!(control.level(), LogLevel::Debug);
        assert!(log.is_debug_enabled());
        slog::debug!(log, "shown");
        drop(log);
        drop(guard);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("shown") && !text.contains("hidden"), "{text}");
        let missing = build(
            LogFormat::Term,
            LogLevel::Info,
            Some(Path::new("/nonexistent/dir/log")),
        );
        let error = missing.err().unwrap().to_string();
        assert!(error.contains("/nonexistent/dir/log"), "{error}");
        let _ = flushed(build(LogFormat::Json, LogLevel::Info, None).unwrap());
    }
}
