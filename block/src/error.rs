//! Errors from opening disks and from setting up or feeding I/O engines.

use std::io;
use std::path::PathBuf;

/// Why a disk could not be opened or an engine could not take a request.
///
/// Errors of individual I/O requests are not here: they complete with an errno in
/// [`crate::Completion`].
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("disk {}: cannot open: {source}", path.display())]
    Open { path: PathBuf, source: io::Error },
    #[error("disk {}: cannot read its metadata: {source}", path.display())]
    Metadata { path: PathBuf, source: io::Error },
    #[error("disk {}: not a regular file or a block device", path.display())]
    NotFileOrBlockDevice { path: PathBuf },
    #[error("disk {}: cannot read the block device size: {source}", path.display())]
    DeviceSize { path: PathBuf, source: io::Error },
    #[error("disk {}: size is 0", path.display())]
    Empty { path: PathBuf },
    #[error("disk {}: size {size} is not a multiple of the logical block size {logical_block_size}", path.display())]
    SizeNotMultiple {
        path: PathBuf,
        size: u64,
        logical_block_size: u32,
    },
    #[error("disk {}: cache=none needs direct I/O, which this file does not support", path.display())]
    DirectIoUnsupported { path: PathBuf },
    #[error(
        "disk {}: direct I/O needs offsets aligned to {offset_alignment} bytes, more than the logical block size {logical_block_size}; use a larger logical block size or cache=writeback",
        path.display()
    )]
    DirectIoAlignment {
        path: PathBuf,
        offset_alignment: u32,
        logical_block_size: u32,
    },
    #[error("disk {}: the image is locked by another process or disk (a {wanted} lock is refused); locking=off shares it anyway", path.display())]
    Locked { path: PathBuf, wanted: &'static str },
    #[error("disk {}: cannot lock the image: {source}", path.display())]
    Lock { path: PathBuf, source: io::Error },
    #[error("disk {}: the backing file shrank to {size} bytes from {current}; only growing is supported", path.display())]
    Shrunk {
        path: PathBuf,
        size: u64,
        current: u64,
    },
    #[error("disk {}: a file-backed disk takes its new size from the file; grow the file and resize without a size", path.display())]
    FileResizeTakesNoSize { path: PathBuf },
    #[error("null disk: resize needs the new size")]
    NullResizeNeedsSize,
    #[error("logical block size {0} is not 512 or 4096")]
    LogicalBlockSize(u32),
    #[error("null disk: size {size} is 0 or not a multiple of the logical block size {logical_block_size}")]
    NullSize { size: u64, logical_block_size: u32 },
    #[error("completion eventfd: {0}")]
    Eventfd(io::Error),
    #[error("io_uring unavailable: {0}")]
    IoUringSetup(io::Error),
    #[error("cannot start the I/O threads: {0}")]
    Threads(io::Error),
    #[error("the I/O threads are gone")]
    ThreadsGone,
}
