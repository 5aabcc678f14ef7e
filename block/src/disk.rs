//! A storage backend: a raw file, a block device, or `null` (no storage at all).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use vmm_sys_util::ioctl_ior_nr;

use crate::error_policy::{ErrorPolicy, IoStatus};
use crate::error_stats::{ErrorReport, ErrorStats};
use crate::flush_state::FlushState;
use crate::{BlockError, CacheMode, DiscardMode, DiskOptions};

ioctl_ior_nr!(BLKGETSIZE64, 0x12, 114, u64);

/// Alignments O_DIRECT needs: of buffer addresses, and of file offsets and segment lengths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirectIoAlignment {
    pub memory: u32,
    pub offset: u32,
}

/// The memory alignment assumed when the kernel does not report one: a page is always enough.
const FALLBACK_MEMORY_ALIGNMENT: u32 = 4096;
/// The offset alignment assumed for files when the kernel does not report one (QEMU's guess).
const FALLBACK_FILE_OFFSET_ALIGNMENT: u32 = 512;

#[derive(Debug)]
enum Backend {
    /// Completes every request after `latency` (zero: at once).
    Null { latency: Duration },
    File {
        file: File,
        path: PathBuf,
        block_device: bool,
        /// Its file system may wait inside a request it was asked not to wait in (FUSE, NFS):
        /// io_uring must hand its requests to a worker rather than issue them on the thread.
        blocks_on_submit: bool,
    },
}

/// An open disk, shared by the iothreads as `Arc<Disk>`.
#[derive(Debug)]
pub struct Disk {
    backend: Backend,
    /// Changes only through `resize`; requests check their range against the current value.
    size: AtomicU64,
    logical_block_size: u32,
    read_only: bool,
    unmap: bool,
    can_punch_holes: bool,
    direct_io: Option<DirectIoAlignment>,
    flush_state: FlushState,
    error_stats: ErrorStats,
    error_policy: ErrorPolicy,
    io_status: IoStatus,
}

impl Disk {
    /// Opens a regular file or a block device as `options` say.
    pub fn open(options: &DiskOptions) -> Result<Disk, BlockError> {
        let path = &options.path;
        let logical_block_size = checked_logical_block_size(options.logical_block_size)?;
        let direct = options.cache == CacheMode::None;
        let file = OpenOptions::new()
            .read(true)
            .write(!options.read_only)
            .custom_flags(if direct { libc::O_DIRECT } else { 0 })
            .open(path)
            .map_err(|source| BlockError::Open {
                path: path.clone(),
                source,
            })?;
        let metadata = file.metadata().map_err(|source| BlockError::Metadata {
            path: path.clone(),
            source,
        })?;
        let block_device = metadata.file_type().is_block_device();
        if !block_device && !metadata.file_type().is_file() {
            return Err(BlockError::NotFileOrBlockDevice { path: path.clone() });
        }
        if options.locking {
            lock_image(&file, options.read_only).map_err(|source| {
                if source.kind() == io::ErrorKind::WouldBlock {
                    BlockError::Locked {
                        path: path.clone(),
                        wanted: if options.read_only { "shared" } else { "write" },
                    }
                } else {
                    BlockError::Lock {
                        path: path.clone(),
                        source,
                    }
                }
            })?;
        }
        let size = file_size(&file, &metadata, block_device, path, logical_block_size)?;
        let direct_io = if direct {
            let alignment = direct_io_alignment(&file, block_device, path)?;
            if alignment.offset > logical_block_size {
                return Err(BlockError::DirectIoAlignment {
                    path: path.clone(),
                    offset_alignment: alignment.offset,
                    logical_block_size,
                });
            }
            Some(alignment)
        } else {
            None
        };
        let blocks_on_submit = !block_device && !on_nowait_file_system(&file);
        let unmap = options.discard == DiscardMode::Unmap;
        let can_punch_holes = !options.read_only
            && if block_device {
                block_device_discards(&metadata)
            } else {
                file_punches_holes(&file, size)
            };
        Ok(Disk {
            backend: Backend::File {
                file,
                path: path.clone(),
                block_device,
                blocks_on_submit,
            },
            size: AtomicU64::new(size),
            logical_block_size,
            read_only: options.read_only,
            unmap,
            can_punch_holes,
            direct_io,
            flush_state: FlushState::default(),
            error_stats: ErrorStats::default(),
            error_policy: ErrorPolicy::default(),
            io_status: IoStatus::default(),
        })
    }

    /// A disk without storage for benchmarks: every request completes at once with its full
    /// length, writes are dropped and reads leave the buffers untouched (like QEMU's null-co
    /// with read-zeroes off), so that only the device's own cost is measured.
    pub fn null(size: u64, logical_block_size: u32) -> Result<Disk, BlockError> {
        Disk::null_with_latency(size, logical_block_size, Duration::ZERO)
    }

    /// A null disk whose requests complete `latency` after they were submitted, as if it were
    /// slow storage (`--disk null,latency-us=U`). io_uring waits with a timer, holding no
    /// thread; the blocking engines sleep on their thread.
    pub fn null_with_latency(
        size: u64,
        logical_block_size: u32,
        latency: Duration,
    ) -> Result<Disk, BlockError> {
        let logical_block_size = checked_logical_block_size(logical_block_size)?;
        if size == 0 || size % u64::from(logical_block_size) != 0 {
            return Err(BlockError::NullSize {
                size,
                logical_block_size,
            });
        }
        Ok(Disk {
            backend: Backend::Null { latency },
            size: AtomicU64::new(size),
            logical_block_size,
            read_only: false,
            unmap: true,
            can_punch_holes: true,
            direct_io: None,
            flush_state: FlushState::default(),
            error_stats: ErrorStats::default(),
            error_policy: ErrorPolicy::default(),
            io_status: IoStatus::default(),
        })
    }

    /// Size in bytes, a multiple of the logical block size.
    pub fn size(&self) -> u64 {
        self.size.load(Ordering::Relaxed)
    }

    /// Takes the backing file's current size, or `null_size` for a null disk (which has no
    /// other source of a size); returns the new size. A file may only grow or keep its size:
    /// a guest may have data past a shrunken end in flight.
    pub fn resize(&self, null_size: Option<u64>) -> Result<u64, BlockError> {
        let current = self.size();
        let size = match (&self.backend, null_size) {
            (Backend::Null { .. }, Some(size)) => {
                if size == 0 || size % u64::from(self.logical_block_size) != 0 {
                    return Err(BlockError::NullSize {
                        size,
                        logical_block_size: self.logical_block_size,
                    });
                }
                size
            }
            (Backend::Null { .. }, None) => return Err(BlockError::NullResizeNeedsSize),
            (Backend::File { path, .. }, Some(_)) => {
                return Err(BlockError::FileResizeTakesNoSize { path: path.clone() })
            }
            (
                Backend::File {
                    file,
                    path,
                    block_device,
                    ..
                },
                None,
            ) => {
                let metadata = file.metadata().map_err(|source| BlockError::Metadata {
                    path: path.clone(),
                    source,
                })?;
                file_size(
                    file,
                    &metadata,
                    *block_device,
                    path,
                    self.logical_block_size,
                )?
            }
        };
        if size < current && !self.is_null() {
            return Err(BlockError::Shrunk {
                path: self.path().map(Path::to_path_buf).unwrap_or_default(),
                size,
                current,
            });
        }
        self.size.store(size, Ordering::Relaxed);
        Ok(size)
    }

    pub fn logical_block_size(&self) -> u32 {
        self.logical_block_size
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Whether discards reach the backend: `discard=unmap` and a backend that can deallocate.
    pub fn discard_supported(&self) -> bool {
        self.unmap && self.can_punch_holes
    }

    /// Whether write-zeroes requests are accepted. They always work on a writable disk: when the
    /// backend cannot zero a range cheaply the engine writes zeroes.
    pub fn write_zeroes_supported(&self) -> bool {
        !self.read_only
    }

    pub fn is_null(&self) -> bool {
        matches!(self.backend, Backend::Null { .. })
    }

    /// The completion latency of a null disk; zero for other disks.
    pub fn null_latency(&self) -> Duration {
        match self.backend {
            Backend::Null { latency } => latency,
            Backend::File { .. } => Duration::ZERO,
        }
    }

    /// The backing file's path; `None` for a null disk.
    pub fn path(&self) -> Option<&Path> {
        match &self.backend {
            Backend::Null { .. } => None,
            Backend::File { path, .. } => Some(path),
        }
    }

    /// O_DIRECT's alignment needs with `cache=none`; `None` when I/O goes through the page cache.
    pub fn direct_io_alignment(&self) -> Option<DirectIoAlignment> {
        self.direct_io
    }

    /// Counts a failed request (reading, or modifying the disk when `write`) and says whether
    /// it deserves a warning now.
    pub fn record_error(&self, errno: i32, write: bool) -> ErrorReport {
        self.error_stats.record(errno, write)
    }

    /// Failed requests since the disk was opened.
    pub fn error_count(&self) -> u64 {
        self.error_stats.total()
    }

    /// The disk with `werror=`/`rerror=` set as `policy` says (QEMU's defaults otherwise).
    pub fn with_error_policy(self, policy: ErrorPolicy) -> Disk {
        Disk {
            error_policy: policy,
            ..self
        }
    }

    pub fn error_policy(&self) -> ErrorPolicy {
        self.error_policy
    }

    /// Whether the error policy stopped the disk, and its held requests.
    pub fn io_status(&self) -> &IoStatus {
        &self.io_status
    }

    pub(crate) fn flush_state(&self) -> &FlushState {
        &self.flush_state
    }

    /// The backing file descriptor; `None` for a null disk.
    pub(crate) fn fd(&self) -> Option<RawFd> {
        match &self.backend {
            Backend::Null { .. } => None,
            Backend::File { file, .. } => Some(file.as_raw_fd()),
        }
    }

    /// Whether a request to this disk may wait on the submitting thread however it is issued.
    pub(crate) fn blocks_on_submit(&self) -> bool {
        matches!(
            self.backend,
            Backend::File {
                blocks_on_submit: true,
                ..
            }
        )
    }

    pub(crate) fn is_block_device(&self) -> bool {
        matches!(
            self.backend,
            Backend::File {
                block_device: true,
                ..
            }
        )
    }
}

/// Whether `file` lives on a local file system that keeps io_uring's non-blocking attempt:
/// ext4, XFS, btrfs and tmpfs answer it with EAGAIN rather than wait. Others may wait in it
/// (a FUSE or NFS write waits for its server's answer, with the thread stuck in
/// io_uring_enter), so only these known ones are issued on the thread.
fn on_nowait_file_system(file: &File) -> bool {
    // SAFETY: a zeroed statfs is a valid value of this plain C struct.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: fstatfs only writes the statfs it is given, for a descriptor `file` keeps open.
    if unsafe { libc::fstatfs(file.as_raw_fd(), &mut stat) } != 0 {
        return false;
    }
    matches!(
        stat.f_type,
        libc::EXT4_SUPER_MAGIC
            | libc::XFS_SUPER_MAGIC
            | libc::BTRFS_SUPER_MAGIC
            | libc::TMPFS_MAGIC
    )
}

/// The size of a regular file or block device, checked against the logical block size.
fn file_size(
    file: &File,
    metadata: &std::fs::Metadata,
    block_device: bool,
    path: &Path,
    logical_block_size: u32,
) -> Result<u64, BlockError> {
    let size = if block_device {
        block_device_size(file).map_err(|source| BlockError::DeviceSize {
            path: path.to_path_buf(),
            source,
        })?
    } else {
        metadata.len()
    };
    if size == 0 {
        return Err(BlockError::Empty {
            path: path.to_path_buf(),
        });
    }
    if size % u64::from(logical_block_size) != 0 {
        return Err(BlockError::SizeNotMultiple {
            path: path.to_path_buf(),
            size,
            logical_block_size,
        });
    }
    Ok(size)
}

/// Takes an open-file-description lock on the whole image, as QEMU's file driver does on its
/// permission bytes: shared for readers, exclusive for writers. The lock goes with the file.
/// Whole-file locks also conflict with QEMU's own byte locks, so QEMU and we exclude each other.
fn lock_image(file: &File, shared: bool) -> io::Result<()> {
    // SAFETY: flock is plain old data; all-zero is a valid value that the fields below complete.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = if shared { libc::F_RDLCK } else { libc::F_WRLCK } as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    // SAFETY: F_OFD_SETLK reads the flock struct, which lives across the call.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &lock) } == 0 {
        return Ok(());
    }
    let error = io::Error::last_os_error();
    match error.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EACCES) => Err(io::ErrorKind::WouldBlock.into()),
        _ => Err(error),
    }
}

/// Only powers of two: `IoRequest::check` tests alignment with a mask.
fn checked_logical_block_size(size: u32) -> Result<u32, BlockError> {
    match size {
        512 | 4096 => Ok(size),
        _ => Err(BlockError::LogicalBlockSize(size)),
    }
}

fn block_device_size(file: &File) -> io::Result<u64> {
    let mut size = 0u64;
    // SAFETY: BLKGETSIZE64 writes one u64 to the pointer, which points to a live u64.
    let ret = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64() as _, &mut size as *mut u64) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(size)
}

/// Asks the kernel (statx STATX_DIOALIGN) and otherwise assumes conservative values.
fn direct_io_alignment(
    file: &File,
    block_device: bool,
    path: &Path,
) -> Result<DirectIoAlignment, BlockError> {
    // SAFETY: statx is plain old data; all-zero is a valid value.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: the path is a NUL-terminated empty string, which AT_EMPTY_PATH makes statx apply
    // to the fd itself, and stx is a live statx buffer.
    let ret = unsafe {
        libc::statx(
            file.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            &mut stx,
        )
    };
    if ret == 0 && stx.stx_mask & libc::STATX_DIOALIGN != 0 {
        if stx.stx_dio_offset_align == 0 || stx.stx_dio_mem_align == 0 {
            return Err(BlockError::DirectIoUnsupported {
                path: path.to_path_buf(),
            });
        }
        return Ok(DirectIoAlignment {
            memory: stx.stx_dio_mem_align,
            offset: stx.stx_dio_offset_align,
        });
    }
    let offset = if block_device {
        block_device_sector_size(file)
    } else {
        FALLBACK_FILE_OFFSET_ALIGNMENT
    };
    Ok(DirectIoAlignment {
        memory: FALLBACK_MEMORY_ALIGNMENT,
        offset,
    })
}

fn block_device_sector_size(file: &File) -> u32 {
    let mut size: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one int to the pointer, which points to a live c_int.
    let ret = unsafe {
        libc::ioctl(
            file.as_raw_fd(),
            libc::BLKSSZGET,
            &mut size as *mut libc::c_int,
        )
    };
    match u32::try_from(size) {
        Ok(size) if ret == 0 && size.is_power_of_two() => size,
        _ => FALLBACK_MEMORY_ALIGNMENT,
    }
}

/// Probes hole punching just past the end of the file, where it cannot touch any data.
fn file_punches_holes(file: &File, size: u64) -> bool {
    let Ok(offset) = libc::off_t::try_from(size) else {
        return false;
    };
    // SAFETY: fallocate only reads its integer arguments; the range lies beyond the file's data.
    let ret = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            4096,
        )
    };
    ret == 0
}

fn block_device_discards(metadata: &std::fs::Metadata) -> bool {
    let rdev = metadata.rdev();
    let sysfs = format!(
        "/sys/dev/block/{}:{}/queue/discard_max_bytes",
        libc::major(rdev),
        libc::minor(rdev)
    );
    std::fs::read_to_string(sysfs)
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok())
        .is_some_and(|max| max > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn file_of(len: u64) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        file.as_file().set_len(len).unwrap();
        file
    }

    #[test]
    fn opens_a_file_with_its_size() {
        let file = file_of(1 << 20);
        let disk = Disk::open(&DiskOptions::new(file.path())).unwrap();
        assert_eq!(disk.size(), 1 << 20);
        assert_eq!(disk.logical_block_size(), 512);
        assert!(!disk.read_only());
        assert!(!disk.is_null());
        assert!(!disk.is_block_device());
        assert!(disk.write_zeroes_supported());
        assert!(!disk.discard_supported(), "discard=ignore is the default");
        assert_eq!(disk.direct_io_alignment(), None);
        assert_eq!(disk.path(), Some(file.path()));
        assert_eq!(
            std::fs::metadata(file.path()).unwrap().len(),
            1 << 20,
            "probe kept the size"
        );
    }

    #[test]
    fn discard_needs_unmap_mode() {
        let file = file_of(1 << 20);
        let options = DiskOptions {
            discard: DiscardMode::Unmap,
            ..DiskOptions::new(file.path())
        };
        assert!(
            Disk::open(&options).unwrap().discard_supported(),
            "ext4 and tmpfs punch holes"
        );
        let read_only = DiskOptions {
            read_only: true,
            ..options
        };
        assert!(!Disk::open(&read_only).unwrap().discard_supported());
    }

    #[test]
    fn read_only_opens_without_write_access() {
        let file = file_of(8192);
        let mut permissions = std::fs::metadata(file.path()).unwrap().permissions();
        permissions.set_readonly(true);
        std::fs::set_permissions(file.path(), permissions).unwrap();
        let options = DiskOptions {
            read_only: true,
            ..DiskOptions::new(file.path())
        };
        let disk = Disk::open(&options).unwrap();
        assert!(disk.read_only());
        assert!(!disk.write_zeroes_supported());
        // SAFETY: the fd is the disk's own, open for the whole call.
        let flags = unsafe { libc::fcntl(disk.fd().unwrap(), libc::F_GETFL) };
        assert_eq!(flags & libc::O_ACCMODE, libc::O_RDONLY);
    }

    #[test]
    fn rejects_bad_sizes_and_paths() {
        let odd = file_of(1000);
        let error = Disk::open(&DiskOptions::new(odd.path())).unwrap_err();
        assert!(matches!(
            error,
            BlockError::SizeNotMultiple {
                size: 1000,
                logical_block_size: 512,
                ..
            }
        ));
        assert!(error
            .to_string()
            .starts_with(&format!("disk {}: size 1000", odd.path().display())));

        let small = file_of(2048);
        let options = DiskOptions {
            logical_block_size: 4096,
            ..DiskOptions::new(small.path())
        };
        assert!(matches!(
            Disk::open(&options),
            Err(BlockError::SizeNotMultiple { .. })
        ));
        let options = DiskOptions {
            logical_block_size: 1024,
            ..DiskOptions::new(small.path())
        };
        assert!(matches!(
            Disk::open(&options),
            Err(BlockError::LogicalBlockSize(1024))
        ));

        let empty = file_of(0);
        assert!(matches!(
            Disk::open(&DiskOptions::new(empty.path())),
            Err(BlockError::Empty { .. })
        ));

        let error = Disk::open(&DiskOptions::new("/nonexistent/disk.img")).unwrap_err();
        assert!(
            matches!(&error, BlockError::Open { source, .. } if source.kind() == io::ErrorKind::NotFound)
        );
        assert!(error
            .to_string()
            .starts_with("disk /nonexistent/disk.img: cannot open: "));

        let dir = tempfile::tempdir().unwrap();
        let options = DiskOptions {
            read_only: true,
            ..DiskOptions::new(dir.path())
        };
        assert!(matches!(
            Disk::open(&options),
            Err(BlockError::NotFileOrBlockDevice { .. })
        ));
    }

    #[test]
    fn cache_none_learns_direct_io_alignment() {
        let file = file_of(1 << 20);
        let options = DiskOptions {
            cache: CacheMode::None,
            ..DiskOptions::new(file.path())
        };
        let disk = Disk::open(&options).unwrap();
        let alignment = disk.direct_io_alignment().unwrap();
        assert!(alignment.memory.is_power_of_two() && alignment.offset.is_power_of_two());
        assert!(alignment.offset <= 512);
        // SAFETY: the fd is the disk's own, open for the whole call.
        let flags = unsafe { libc::fcntl(disk.fd().unwrap(), libc::F_GETFL) };
        assert_ne!(flags & libc::O_DIRECT, 0);
    }

    #[test]
    fn images_are_locked_shared_for_readers_exclusive_for_writers() {
        let file = file_of(1 << 20);
        let writer = Disk::open(&DiskOptions::new(file.path())).unwrap();
        let error = Disk::open(&DiskOptions::new(file.path())).unwrap_err();
        assert!(matches!(error, BlockError::Locked { .. }), "{error}");
        assert!(error.to_string().contains("is locked"), "{error}");
        assert!(error
            .to_string()
            .contains(&file.path().display().to_string()));
        let reader = DiskOptions {
            read_only: true,
            ..DiskOptions::new(file.path())
        };
        assert!(matches!(
            Disk::open(&reader),
            Err(BlockError::Locked { .. })
        ));
        let unlocked = DiskOptions {
            locking: false,
            ..DiskOptions::new(file.path())
        };
        Disk::open(&unlocked).unwrap();
        drop(writer);
        let first = Disk::open(&reader).unwrap();
        let second = Disk::open(&reader).unwrap();
        assert!(matches!(
            Disk::open(&DiskOptions::new(file.path())),
            Err(BlockError::Locked { .. })
        ));
        drop((first, second));
        Disk::open(&DiskOptions::new(file.path())).unwrap();
    }

    #[test]
    fn resize_follows_the_file_and_sets_null_sizes() {
        let file = file_of(1 << 20);
        let disk = Disk::open(&DiskOptions::new(file.path())).unwrap();
        file.as_file().set_len(2 << 20).unwrap();
        assert_eq!(disk.resize(None).unwrap(), 2 << 20);
        assert_eq!(disk.size(), 2 << 20);
        assert!(matches!(
            disk.resize(Some(4 << 20)),
            Err(BlockError::FileResizeTakesNoSize { .. })
        ));
        file.as_file().set_len(1 << 20).unwrap();
        assert!(matches!(disk.resize(None), Err(BlockError::Shrunk { .. })));
        assert_eq!(disk.size(), 2 << 20);

        let null = Disk::null(1 << 20, 512).unwrap();
        assert_eq!(null.resize(Some(8 << 20)).unwrap(), 8 << 20);
        assert!(matches!(
            null.resize(None),
            Err(BlockError::NullResizeNeedsSize)
        ));
        assert!(matches!(
            null.resize(Some(1000)),
            Err(BlockError::NullSize { .. })
        ));
    }

    #[test]
    fn null_disk() {
        let disk = Disk::null(1 << 30, 4096).unwrap();
        assert!(disk.is_null());
        assert_eq!(disk.size(), 1 << 30);
        assert_eq!(disk.logical_block_size(), 4096);
        assert!(disk.discard_supported() && disk.write_zeroes_supported());
        assert_eq!(disk.path(), None);
        assert!(matches!(
            Disk::null(1000, 512),
            Err(BlockError::NullSize { .. })
        ));
        assert!(matches!(
            Disk::null(0, 512),
            Err(BlockError::NullSize { .. })
        ));
        assert!(matches!(
            Disk::null(4096, 0),
            Err(BlockError::LogicalBlockSize(0))
        ));
    }

    #[test]
    fn disk_is_shareable_across_threads() {
        fn assert_send_sync<T: Send + Sync>(_: &T) {}
        let disk = Arc::new(Disk::null(4096, 512).unwrap());
        assert_send_sync(&disk);
    }
}
