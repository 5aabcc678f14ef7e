//! Everything that stops the benchmark, each with what it was doing.

use std::io;
use std::path::PathBuf;

use tests::guest_memory::MemoryError;
use tests::scsi::ScsiError;
use tests::server_process::ServerProcessError;
use tests::split_queue::QueueError;
use tests::DriverError;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{option} {value}: not a number of seconds")]
    Seconds { option: &'static str, value: f64 },
    #[error("--seconds must be above 0")]
    NoSeconds,
    #[error("--depth, --bs, --queues, --luns and --rounds must be above 0")]
    ZeroSize,
    #[error("every --iothreads count is above every --queues count: nothing to run")]
    NothingToRun,
    #[error("{0}")]
    Server(#[from] ServerProcessError),
    #[error("the driver could not bring the device up: {source}\nserver stderr:\n{stderr}")]
    Connect { source: DriverError, stderr: String },
    #[error("the server exited during the run ({cause}); its stderr:\n{stderr}")]
    ServerExited {
        cause: Box<BenchError>,
        stderr: String,
    },
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
    #[error("LUN 0 is not ready: TEST UNIT READY: status {status:#04x} sense {sense:?}")]
    NotReady {
        status: u8,
        sense: Option<(u8, u8, u8)>,
    },
    #[error("READ CAPACITY 16 failed: not GOOD or shorter than 12 bytes")]
    Capacity,
    #[error("--depth {depth} does not fit virtqueues of {size} entries (raise --queue-size)")]
    DepthAboveQueueSize { depth: u16, size: u16 },
    #[error("--bs {bs} is not a multiple of the disk's {block_size}-byte blocks")]
    BsNotBlocks { bs: u64, block_size: u32 },
    #[error("--bs {bs} exceeds the device's largest transfer of {max_transfer} bytes")]
    BsAboveMaxTransfer { bs: u64, max_transfer: u64 },
    #[error("--bs {bs} is larger than the disk ({blocks} blocks of {block_size})")]
    BsAboveDisk {
        bs: u64,
        blocks: u64,
        block_size: u32,
    },
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
    #[error("the device completed head {id} on virtqueue {queue}, which was not in flight")]
    UnknownHead { queue: u16, id: u32 },
    #[error("a directory for callgrind's dumps: {0}")]
    CallgrindDir(io::Error),
    #[error("callgrind_control (Debian valgrind) cannot run: {0}")]
    CallgrindControlSpawn(io::Error),
    #[error("callgrind_control {option} {pid} failed: {stderr}")]
    CallgrindControl {
        option: &'static str,
        pid: u32,
        stderr: String,
    },
    #[error("callgrind wrote no totals line to {path}")]
    CallgrindDump { path: PathBuf },
    #[error("the thread driving virtqueue {0} panicked")]
    WorkerPanicked(u16),
    #[error("writing {path}: {source}")]
    Json { path: PathBuf, source: io::Error },
    #[error("{count} request(s) failed; the first: {first}")]
    FailedRequests { count: u64, first: String },
}
