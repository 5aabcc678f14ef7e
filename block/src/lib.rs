//! Storage for the virtio-scsi device, knowing nothing of SCSI, virtio or vfio-user.
//!
//! A [`Disk`] is a raw file, a block device or `null`, opened from [`DiskOptions`] and shared
//! by the iothreads. Each iothread drives its I/O through an [`Engine`]: it submits
//! [`IoRequest`]s whose [`IoBuffers`] point into guest memory and reaps [`Completion`]s when
//! the engine's eventfd fires. [`IoUringEngine`] hands requests to the kernel in batches
//! without copying; [`SyncEngine`] executes them at once with blocking calls, where io_uring is
//! unavailable; [`ThreadPoolEngine`] runs the same blocking calls on threads of its own.

mod aligned_buffer;
mod disk;
mod engine;
mod error;
mod error_policy;
mod error_stats;
mod flush_state;
mod io_buffers;
mod io_request;
mod io_uring_engine;
mod null_latency;
mod options;
mod sync_engine;
mod thread_pool_engine;

pub use disk::{DirectIoAlignment, Disk};
pub use engine::{borrow_eventfd, Completion, Engine, Submitted};
pub use error::BlockError;
pub use error_policy::{ErrorAction, ErrorPolicy, IoStatus, OnReadError, OnWriteError};
pub use error_stats::{ErrorReport, SUMMARY_INTERVAL};
pub use io_buffers::IoBuffers;
pub use io_request::IoRequest;
pub use io_uring_engine::IoUringEngine;
pub use options::{CacheMode, DiscardMode, DiskOptions};
pub use sync_engine::SyncEngine;
pub use thread_pool_engine::ThreadPoolEngine;
