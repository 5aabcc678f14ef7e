//! Everything that stops the benchmark, each with what it was doing.

use std::io;
use std::path::PathBuf;

use tests::guest_memory::MemoryError;
use tests::scsi::ScsiError;
use tests::server_process::ServerError;
use tests::split_queue::QueueError;
use tests::DriverError;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Args(String),
    #[error("{0}")]
    Server(#[from] ServerError),
    #[error("the driver could not bring the device up: {source}\nserver stderr:\n{stderr}")]
    Connect { source: DriverError, stderr: String },
    #[error("the server exited during the run ({cause}); its stderr:\n{stderr}")]
    ServerExited { cause: String, stderr: String },
    #[error("driver: {0}")]
    Driver(#[from] DriverError),
    #[error("guest memory: {0}")]
    Memory(#[from] MemoryError),
    #[error("virtqueue: {0}")]
    Ring(#[from] QueueError),
    #[error("virtio-scsi: {0}")]
    Scsi(#[from] ScsiError),
    #[error("the device did not negotiate VIRTIO_F_INDIRECT_DESC, which the benchmark uses")]
    NoIndirect,
    #[error("LUN 0 is not ready: {0}")]
    NotReady(String),
    #[error("READ CAPACITY 16 failed: {0}")]
    Capacity(String),
    #[error("{0}")]
    Geometry(String),
    #[error("creating the disk file in {dir}: {source}")]
    DiskFile { dir: PathBuf, source: io::Error },
    #[error("reading {path}: {source}")]
    Proc { path: PathBuf, source: io::Error },
    #[error("{path}: unexpected format ({what})")]
    ProcFormat { path: PathBuf, what: &'static str },
    #[error("control socket {path}: `ctl stats` answered {reply:?}")]
    Stats { path: PathBuf, reply: String },
    #[error("creating a directory for the control socket: {0}")]
    ControlDir(io::Error),
    #[error("the device completed head {head} on virtqueue {queue}, which was not in flight")]
    UnknownHead { queue: u16, head: u16 },
    #[error("the thread driving virtqueue {0} panicked")]
    WorkerPanicked(u16),
    #[error("writing {path}: {source}")]
    Json { path: PathBuf, source: io::Error },
    #[error("{count} request(s) failed; the first: {first}")]
    FailedRequests { count: u64, first: String },
}
