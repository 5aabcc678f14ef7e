//! The benchmark's command line, and the matrix of configurations it expands to.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::error::BenchError;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DiskKind {
    /// `--disk null,size=...`: no I/O at all, the device path alone.
    Null,
    /// A raw file: a fully written temporary one in `--file-dir`, or `--file`.
    File,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Kick {
    /// Posted REGION_WRITEs on the vfio-user socket, as QEMU forwards a guest's notify write.
    Socket,
    /// Writes to the ioeventfds the server hands out with GET_REGION_IO_FDS.
    Iofd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Pattern {
    Randread,
    Randwrite,
    Read,
    Write,
}

impl Pattern {
    pub fn is_write(self) -> bool {
        matches!(self, Pattern::Randwrite | Pattern::Write)
    }

    pub fn is_random(self) -> bool {
        matches!(self, Pattern::Randread | Pattern::Randwrite)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Wait {
    /// Sleep on the queue's MSI-X eventfd, as a guest waits for its interrupt.
    Interrupt,
    /// Spin on the used ring (takes a whole core per queue thread).
    Poll,
}

/// Drives the vfio-user-scsi server with the userspace virtio-scsi driver, without a guest, and
/// prints IOPS, latency percentiles and the server's CPU time per request.
///
/// Options that take a comma-separated list (--queues, --iothreads, --depth, --disk, --kick, --rw)
/// add a dimension to the matrix of runs; by default null and file disks x socket and iofd kicks
/// x 1 and 2 queues, randread 4 KiB at depth 32 for 5 s each.
#[derive(Debug, Parser)]
#[command(name = "bench-host", bin_name = "cargo bench -p tests --bench host --")]
pub struct Args {
    /// Request queues, each driven by its own thread (default 1,2).
    #[arg(long, value_delimiter = ',')]
    pub queues: Vec<u16>,
    /// Requests kept in flight on each queue (default 32); a list sweeps the depth, e.g.
    /// `--depth 32,64,128,256,512,1024` with `--queue-size 1024`.
    #[arg(long, value_delimiter = ',')]
    pub depth: Vec<u16>,
    /// Iothreads the server runs (`--iothread io0 ...`, request queues spread round-robin); 0 is
    /// the main loop. By default none are added. Counts above the queue count are skipped.
    #[arg(long, value_delimiter = ',')]
    pub iothreads: Vec<u16>,
    /// The null disk completes each request after this many microseconds
    /// (`--disk null,latency-us=U`), as slow storage would, without holding a thread.
    #[arg(long, default_value_t = 0)]
    pub null_latency_us: u64,
    /// LUNs the server serves: LUN 0 is the measured disk, the others are idle null disks (for
    /// memory figures).
    #[arg(long, default_value_t = 1)]
    pub luns: u16,
    /// Bytes per request (a multiple of the disk's block size).
    #[arg(long, default_value_t = 4096)]
    pub bs: u32,
    /// Access pattern (default randread).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub rw: Vec<Pattern>,
    /// Measured seconds per configuration.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Seconds of load before the measurement starts.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Disk backends (default null,file).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub disk: Vec<DiskKind>,
    /// Kick methods (default socket,iofd).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub kick: Vec<Kick>,
    /// How the driver waits for completions.
    #[arg(long, value_enum, default_value_t = Wait::Interrupt)]
    pub wait: Wait,
    /// Size of the null disk and of the temporary file disk.
    #[arg(long, default_value_t = 1 << 30)]
    pub disk_size: u64,
    /// Use this existing file or block device as the file disk (write jobs overwrite it).
    /// Without it, a temporary file is written in full once per run, so that reads reach
    /// allocated blocks rather than holes.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Where the temporary file disk is created.
    #[arg(long, default_value = "/var/tmp")]
    pub file_dir: PathBuf,
    /// Extra `--disk` options for the file disk, e.g. `cache=none`.
    #[arg(long, default_value = "")]
    pub disk_options: String,
    /// Virtqueue size the server offers.
    #[arg(long, default_value_t = 256)]
    pub queue_size: u16,
    /// Extra server arguments, split on whitespace, e.g.
    /// '--iothread io0 --iothread-vq-mapping [{"iothread":"io0"}]'.
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    pub server_args: String,
    /// Runs the whole matrix this many times, one configuration after the other in each round,
    /// so that a change in the machine's load falls on every configuration alike; the 2-vs-1
    /// iothreads figure is then the median of the rounds' ratios.
    #[arg(long, default_value_t = 1)]
    pub rounds: u16,
    /// Runs the server under valgrind's callgrind and prints instructions per request per server
    /// thread over the window, whose requests callgrind counts too: a count that does not depend
    /// on the machine's load (the server runs some 50 times slower; use `--poll-max-ns 0` in
    /// --server-args, or empty polls count).
    #[arg(long)]
    pub callgrind: bool,
    /// Also write every result to this JSON file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Set by `cargo bench`; without it (`cargo test --benches`) only the self-checks run.
    #[arg(long, hide = true)]
    pub bench: bool,
}

/// One run of the matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    pub disk: DiskKind,
    pub kick: Kick,
    pub queues: u16,
    /// `None`: no `--iothread` added.
    pub iothreads: Option<u16>,
    pub depth: u16,
    pub bs: u32,
    pub rw: Pattern,
}

impl Args {
    pub fn measured(&self) -> Result<Duration, BenchError> {
        seconds("--seconds", self.seconds).and_then(|d| {
            if d.is_zero() {
                Err(BenchError::NoSeconds)
            } else {
                Ok(d)
            }
        })
    }

    pub fn warmup(&self) -> Result<Duration, BenchError> {
        seconds("--warmup", self.warmup)
    }

    /// Every combination of the listed dimensions, each defaulting to the standard matrix.
    pub fn configurations(&self) -> Result<Vec<Config>, BenchError> {
        if self.depth.contains(&0)
            || self.bs == 0
            || self.queues.contains(&0)
            || self.luns == 0
            || self.rounds == 0
        {
            return Err(BenchError::ZeroSize);
        }
        let disks = or_default(&self.disk, &[DiskKind::Null, DiskKind::File]);
        let kicks = or_default(&self.kick, &[Kick::Socket, Kick::Iofd]);
        let queues = or_default(&self.queues, &[1, 2]);
        let patterns = or_default(&self.rw, &[Pattern::Randread]);
        let depths = or_default(&self.depth, &[32]);
        let iothreads: Vec<Option<u16>> = if self.iothreads.is_empty() {
            vec![None]
        } else {
            self.iothreads.iter().copied().map(Some).collect()
        };
        let mut configs = Vec::new();
        for &disk in &disks {
            for &kick in &kicks {
                for &queues in &queues {
                    for &threads in iothreads.iter().filter(|t| t.unwrap_or(0) <= queues) {
                        for &depth in &depths {
                            for &rw in &patterns {
                                configs.push(Config {
                                    disk,
                                    kick,
                                    queues,
                                    iothreads: threads,
                                    depth,
                                    bs: self.bs,
                                    rw,
                                });
                            }
                        }
                    }
                }
            }
        }
        if configs.is_empty() {
            return Err(BenchError::NothingToRun);
        }
        Ok(configs)
    }
}

fn or_default<T: Clone>(given: &[T], default: &[T]) -> Vec<T> {
    if given.is_empty() {
        default.to_vec()
    } else {
        given.to_vec()
    }
}

fn seconds(option: &'static str, value: f64) -> Result<Duration, BenchError> {
    Duration::try_from_secs_f64(value).map_err(|_| BenchError::Seconds { option, value })
}

/// The name clap would print for a value, for tables and JSON.
pub fn name<T: ValueEnum>(value: T) -> String {
    value
        .to_possible_value()
        .map(|v| v.get_name().to_string())
        .unwrap_or_default()
}
