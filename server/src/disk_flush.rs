//! Making a disk's acknowledged writes durable outside the guest's requests: when the server
//! exits, and when `remove-disk` lets a disk go (as QEMU flushes a drive it removes). Both take
//! the flush a guest's SYNCHRONIZE CACHE takes, so a disk whose flush failed before fails this
//! one too, without trying.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use block::{BlockError, Disk, Engine, IoRequest, Submitted, SyncEngine};

/// Why a disk's flush failed.
#[derive(Debug, thiserror::Error)]
pub enum DiskFlushError {
    #[error(transparent)]
    Engine(#[from] BlockError),
    #[error(transparent)]
    Flush(std::io::Error),
    #[error("cannot start the flush thread: {0}")]
    Spawn(std::io::Error),
    #[error("the flush thread panicked")]
    Panicked,
}

/// Whether `disk` has writes to make durable: a writable file or block device.
pub fn needs_flush(disk: &Disk) -> bool {
    disk.path().is_some() && !disk.read_only()
}

/// Flushes `disk` on the calling thread, for as long as the backend takes.
pub fn flush(disk: &Arc<Disk>) -> Result<(), DiskFlushError> {
    let mut engine = SyncEngine::new()?;
    let result = match engine.submit(disk, IoRequest::Flush, 0)? {
        Submitted::Done(result) => result,
        // The synchronous engine finishes every request inside `submit`: a flush it did not
        // finish is not known to be done.
        Submitted::Started => Err(libc::EIO),
    };
    result
        .map(|_| ())
        .map_err(|errno| DiskFlushError::Flush(std::io::Error::from_raw_os_error(errno)))
}

/// A flush on a thread of its own, so that the main loop, which must never block, only checks
/// on it.
pub struct BackgroundFlush {
    thread: JoinHandle<Result<(), DiskFlushError>>,
    started: Instant,
}

impl BackgroundFlush {
    /// Starts flushing `disk` on a thread named after `lun`.
    pub fn start(disk: Arc<Disk>, lun: u16) -> Result<BackgroundFlush, DiskFlushError> {
        let thread = std::thread::Builder::new()
            .name(format!("flush-lun{lun}"))
            .spawn(move || flush(&disk))
            .map_err(DiskFlushError::Spawn)?;
        Ok(BackgroundFlush {
            thread,
            started: Instant::now(),
        })
    }

    pub fn finished(&self) -> bool {
        self.thread.is_finished()
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// The flush's result, waiting for it unless `finished`.
    pub fn result(self) -> Result<Duration, DiskFlushError> {
        let took = self.started.elapsed();
        self.thread
            .join()
            .map_err(|_| DiskFlushError::Panicked)?
            .map(|()| took)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_background_flush_of_a_file_succeeds() {
        let file = tempfile::NamedTempFile::new().unwrap();
        file.as_file().set_len(1 << 20).unwrap();
        let disk = Arc::new(Disk::open(&block::DiskOptions::new(file.path())).unwrap());
        assert!(needs_flush(&disk));
        let flush = BackgroundFlush::start(disk, 3).unwrap();
        while !flush.finished() {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(flush.result().is_ok());
    }

    #[test]
    fn null_and_read_only_disks_need_no_flush() {
        assert!(!needs_flush(&Disk::null(1 << 20, 512).unwrap()));
        let file = tempfile::NamedTempFile::new().unwrap();
        file.as_file().set_len(1 << 20).unwrap();
        let mut options = block::DiskOptions::new(file.path());
        options.read_only = true;
        assert!(!needs_flush(&Disk::open(&options).unwrap()));
    }
}
