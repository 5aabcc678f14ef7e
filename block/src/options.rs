//! How a disk is opened: the `--disk` options that concern storage.

use std::path::PathBuf;

/// Whether the host page cache sits between the guest and the backing file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CacheMode {
    /// `cache=none`: O_DIRECT, the guest's flushes reach the device.
    None,
    /// `cache=writeback`: through the host page cache (QEMU's default).
    #[default]
    Writeback,
}

/// What to do with the guest's discard (UNMAP) requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DiscardMode {
    /// `discard=unmap`: punch holes in the backing file (or discard on a block device).
    Unmap,
    /// `discard=ignore`: complete discards without touching the backend (QEMU's default).
    #[default]
    Ignore,
}

/// Everything needed to open a [`crate::Disk`] backed by a file or a block device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskOptions {
    pub path: PathBuf,
    pub read_only: bool,
    pub cache: CacheMode,
    pub discard: DiscardMode,
    /// 512 or 4096.
    pub logical_block_size: u32,
    /// Take an OFD lock on the image (`locking=on`, the default): shared when read-only,
    /// exclusive otherwise.
    pub locking: bool,
}

impl DiskOptions {
    /// QEMU's defaults: writable, `cache=writeback`, `discard=ignore`, 512-byte blocks, locked.
    pub fn new(path: impl Into<PathBuf>) -> DiskOptions {
        DiskOptions {
            path: path.into(),
            read_only: false,
            cache: CacheMode::default(),
            discard: DiscardMode::default(),
            logical_block_size: 512,
            locking: true,
        }
    }
}
