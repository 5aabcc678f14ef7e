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

/// The version and the git commit the binary was built from.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (git ",
    env!("VUS_GIT_COMMIT"),
    ")"
);

/// Largest `--num-queues`: virtio-pci allows 1024 virtqueues, two are ctrl and event.
pub const MAX_NUM_QUEUES: u16 = 1022;
pub const MIN_QUEUE_SIZE: u16 = 4;
pub const MAX_QUEUE_SIZE: u16 = 32768;

const AFTER_HELP: &str = "\
Ranges are inclusive: A..=B accepts A, B and everything between.

Example:
  vfio-user-scsi --socket /run/vus.sock --num-queues 2 --iothread io0 --iothread io1 \\
    --disk path=/var/lib/disk.img,cache=none,discard=unmap --disk null,size=1G,lun=1 \\
    --iothread-vq-mapping '[{\"iothread\":\"io0\",\"vqs\":[\"ctrl\",\"event\",0]},{\"iothread\":\"io1\",\"vqs\":[1]}]' \\
    --control-socket /run/vus.ctl
  vfio-user-scsi ctl /run/vus.ctl query

Control client: vfio-user-scsi ctl PATH query|stats|add-disk SPEC|remove-disk LUN|resize LUN [SIZE]|
  cont [LUN]|set-log-level LEVEL (prints the JSON reply; exit status 0 on success, 1 on an error reply,
  2 on a usage mistake). `vfio-user-scsi ctl --help` says more.

Signals: SIGINT and SIGTERM stop the server (the client is released, the socket removed);
SIGHUP reopens --log-file (for logrotate); SIGUSR1 and SIGUSR2 are logged and ignored; SIGPIPE is
ignored (a peer that goes away is seen as a write error). Others have their default effect.

Exit status: 0 after a signal stopped the server, 2 for a mistake on the command line, 1 for
any other failure (the socket, a disk, the log file).";

/// A vfio-user server that gives a guest a virtio-scsi PCI host bus adapter.
///
/// QEMU attaches it with -device vfio-user-pci (guest RAM must be shared, share=on).
#[derive(Debug, Parser)]
#[command(name = "vfio-user-scsi", version = VERSION, after_help = AFTER_HELP)]
pub struct Cli {
    /// Path of the vfio-user UNIX socket to listen on. It is refused while another server holds
    /// PATH.lock, and replaced when stale. Under systemd socket activation (LISTEN_FDS) the
    /// inherited socket is used instead and PATH only names it in the log.
    #[arg(long)]
    pub socket: PathBuf,
    /// Owner of the socket file, so that a QEMU running as another user can connect.
    #[arg(long, value_name = "USER[:GROUP]")]
    pub socket_owner: Option<String>,
    /// Permission bits of the socket and control socket files, in octal.
    #[arg(long, value_name = "MODE", default_value = "0600", value_parser = parse_mode)]
    pub socket_mode: u32,
    /// A disk (repeatable): `path=FILE[,lun=N][,readonly=on][,serial=S][,cache=none|writeback]
    /// [,discard=unmap|ignore][,logical-block-size=512|4096][,locking=on|off]` or
    /// `null,size=BYTES[,lun=N][,logical-block-size=512|4096][,latency-us=U]` (latency-us: every
    /// request completes U microseconds late, as slow storage would). Either takes QEMU's error
    /// policy `[,werror=report|enospc|stop][,rerror=report|stop]`: report gives the guest the
    /// error's sense; stop (and enospc on ENOSPC) holds the failing request and pauses the LUN,
    /// whose later requests wait too, until `ctl cont` resubmits them. Defaults are QEMU's:
    /// cache=writeback, discard=ignore, 512-byte blocks, locking=on (an OFD lock on the image,
    /// shared for readonly=on, exclusive otherwise), werror=enospc, rerror=report. Sizes take K, M, G, T suffixes; `,,` is a
    /// comma inside a value. LUNs are 0..=16383, by default the next free one; Linux names
    /// LUNs from 256 up with flat addressing, so lun=300 shows as 0:0:0:16684 (16384 + 300).
    /// Example: --disk path=/var/lib/a.img,cache=none,serial=DISK-A. Without any --disk, a
    /// sparse temporary 1 GiB disk is served from memory.
    #[arg(long = "disk", value_name = "SPEC")]
    pub disks: Vec<DiskSpec>,
    /// Number of request queues, 1..=1022 (one MSI-X vector each).
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=i64::from(MAX_NUM_QUEUES)))]
    pub num_queues: u16,
    /// Size of each virtqueue: a power of two, 4..=32768.
    #[arg(long, value_name = "N", default_value_t = 256, value_parser = parse_queue_size)]
    pub queue_size: u16,
    /// An iothread to create (repeatable): a thread of that name with its own event loop.
    #[arg(long = "iothread", value_name = "NAME")]
    pub iothreads: Vec<String>,
    /// QEMU's JSON mapping of virtqueues to iothreads, plus the names "ctrl" and "event" for
    /// the fixed queues: `[{"iothread":"io0","vqs":["ctrl","event",0]},{"iothread":"io1","vqs":[1]}]`.
    /// Numbers are request queues, 0..=N-1. Without it, request queues are spread round-robin
    /// over the iothreads, and ctrl and event stay on the main loop.
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
    /// After SIGINT/SIGTERM, how long stopping may take (the requests in flight, then the disks'
    /// flushes) before the server logs the step it is in and the stuck requests, and exits anyway
    /// (status 1), removing its socket.
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    pub shutdown_timeout: u64,
    /// A UNIX socket for `vfio-user-scsi ctl` (line-delimited JSON requests and replies),
    /// created with --socket-mode.
    #[arg(long, value_name = "PATH")]
    pub control_socket: Option<PathBuf>,
    /// Log record format: `term` for people, `json` for tools.
    #[arg(long, value_enum, default_value_t = LogFormat::Term)]
    pub log_format: LogFormat,
    /// `debug` explains every vfio-user message, `trace` every request; `ctl set-log-level`
    /// changes it at run time.
    #[arg(long, value_enum, default_value_t = LogLevel::Info)]
    pub log_level: LogLevel,
    /// Append logs to this file instead of stderr; SIGHUP reopens it.
    #[arg(long, value_name = "FILE")]
    pub log_file: Option<PathBuf>,
}

fn parse_mode(value: &str) -> Result<u32, String> {
    u32::from_str_radix(value, 8)
        .ok()
        .filter(|mode| *mode <= 0o777)
        .ok_or_else(|| format!("'{value}' is not an octal mode 0..=0777"))
}

fn parse_queue_size(value: &str) -> Result<u16, String> {
    value
        .parse::<u16>()
        .ok()
        .filter(|n| n.is_power_of_two() && (MIN_QUEUE_SIZE..=MAX_QUEUE_SIZE).contains(n))
        .ok_or_else(|| {
            format!("'{value}' is not a power of two in {MIN_QUEUE_SIZE}..={MAX_QUEUE_SIZE}")
        })
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
    fn ranges_are_checked_by_one_rule() {
        let parse = |option: &str, value: &str| {
            Cli::try_parse_from(["vfio-user-scsi", "--socket", "s", option, value])
        };
        assert!(parse("--num-queues", "1022").is_ok());
        for bad in ["0", "1023"] {
            let error = parse("--num-queues", bad).unwrap_err().to_string();
            assert!(error.contains("1..=1022"), "{error}");
        }
        assert_eq!(parse("--queue-size", "4").unwrap().queue_size, 4);
        for bad in ["2", "100", "65536"] {
            let error = parse("--queue-size", bad).unwrap_err().to_string();
            assert!(error.contains("4..=32768"), "{error}");
        }
        assert_eq!(parse("--socket-mode", "660").unwrap().socket_mode, 0o660);
        assert!(parse("--socket-mode", "0999").is_err());
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
