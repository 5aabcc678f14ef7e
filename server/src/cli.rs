//! The command line (DESIGN.md is the stable reference for it).

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

use crate::disk_spec::DiskSpec;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Json,
    Term,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

/// How request queues do their disk I/O.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Aio {
    /// One io_uring per queue, batched; falls back to `sync` where the kernel refuses it.
    #[value(name = "io_uring")]
    IoUring,
    /// Blocking system calls on a few threads per queue, so the queue's thread never blocks.
    Threads,
    /// Blocking system calls on the queue's thread.
    Sync,
}

/// A vfio-user server that gives a guest a virtio-scsi PCI host bus adapter.
#[derive(Debug, Parser)]
#[command(name = "vfio-user-scsi", version)]
pub struct Cli {
    /// Path of the vfio-user UNIX socket to listen on.
    #[arg(long)]
    pub socket: PathBuf,
    /// A disk: `path=FILE[,lun=N][,readonly=on][,serial=S][,cache=none|writeback]
    /// [,discard=unmap|ignore][,logical-block-size=512|4096]` or `null,size=BYTES[,lun=N]`.
    /// Without any, a sparse temporary 1 GiB disk is served.
    #[arg(long = "disk")]
    pub disks: Vec<DiskSpec>,
    /// Number of request queues.
    #[arg(long, default_value_t = 1)]
    pub num_queues: u16,
    /// Size of each virtqueue.
    #[arg(long, default_value_t = 256)]
    pub queue_size: u16,
    /// An iothread to create (repeatable).
    #[arg(long = "iothread", value_name = "NAME")]
    pub iothreads: Vec<String>,
    /// QEMU-style JSON mapping of virtqueues to iothreads.
    #[arg(long, value_name = "JSON")]
    pub iothread_vq_mapping: Option<String>,
    /// Longest time an iothread polls its busy queues before notifications are re-enabled and
    /// it sleeps (adaptive, like QEMU's poll-max-ns); 0 disables polling. The main loop never
    /// polls.
    #[arg(long, value_name = "NS", default_value_t = 32768)]
    pub poll_max_ns: u64,
    /// I/O engine of the request queues.
    #[arg(long, value_enum, default_value_t = Aio::IoUring)]
    pub aio: Aio,
    /// After SIGINT/SIGTERM, how long the requests in flight may take to complete before the
    /// server logs them and exits anyway (status 1), removing its socket.
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    pub shutdown_timeout: u64,
    /// Log record format: `term` for people, `json` for tools.
    #[arg(long, value_enum, default_value_t = LogFormat::Term)]
    pub log_format: LogFormat,
    #[arg(long, value_enum, default_value_t = LogLevel::Info)]
    pub log_level: LogLevel,
    /// Append logs to this file instead of stderr.
    #[arg(long, value_name = "FILE")]
    pub log_file: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_repeatable_options() {
        let cli = Cli::try_parse_from([
            "vfio-user-scsi",
            "--socket",
            "/tmp/s",
            "--disk",
            "null,size=4096",
            "--disk",
            "path=/x",
            "--iothread",
            "io0",
            "--iothread",
            "io1",
            "--log-format",
            "json",
            "--aio",
            "threads",
        ])
        .unwrap();
        assert_eq!(cli.socket, PathBuf::from("/tmp/s"));
        assert_eq!(cli.disks.len(), 2);
        assert_eq!(cli.disks[1], "path=/x".parse().unwrap());
        assert_eq!(cli.iothreads, ["io0", "io1"]);
        assert_eq!(
            (cli.num_queues, cli.queue_size, cli.poll_max_ns),
            (1, 256, 32768)
        );
        assert_eq!(cli.log_format, LogFormat::Json);
        assert_eq!(cli.log_level, LogLevel::Info);
        assert_eq!(cli.aio, Aio::Threads);
        let spelled = Cli::try_parse_from(["vfio-user-scsi", "--socket", "s", "--aio", "io_uring"]);
        assert_eq!(spelled.unwrap().aio, Aio::IoUring);
        assert!(cli.iothread_vq_mapping.is_none() && cli.log_file.is_none());
    }

    #[test]
    fn socket_is_required_and_levels_are_checked() {
        assert!(Cli::try_parse_from(["vfio-user-scsi"]).is_err());
        assert!(
            Cli::try_parse_from(["vfio-user-scsi", "--socket", "s", "--log-level", "loud"])
                .is_err()
        );
    }
}
