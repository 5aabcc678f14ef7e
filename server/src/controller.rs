//! Builds the virtio-scsi controller that the command line describes: disks, LUNs, the device
//! and its virtio-pci function.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use block::{Disk, DiskOptions};
use scsi_disk::LunConfig;
use slog::{info, Logger};
use vfio_user_server::DmaMemory;
use virtio::scsi_device::PCI_CLASS;
use virtio::{EngineFactory, ScsiDevice, ScsiDeviceConfig, VirtioPciFunction};

use crate::disk_spec::{assign_luns, Backing, DiskSpec};
use crate::iothread_pool::IothreadPool;
use crate::mapping::{QueueMapping, QueueOwner};
use crate::virtio_function::VirtioFunction;

/// Size of the disk served when the command line names none.
const DEFAULT_DISK_SIZE: u64 = 1 << 30;
/// Largest transfer the block limits page advertises; Linux splits larger requests.
const MAX_TRANSFER_BYTES: u32 = 8 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error(transparent)]
    Luns(#[from] crate::disk_spec::LunAssignError),
    #[error(transparent)]
    Disk(#[from] block::BlockError),
    #[error("cannot create the temporary disk in memory: {0}")]
    TemporaryDisk(std::io::Error),
    #[error("--num-queues/--queue-size/--disk: {0}")]
    Device(#[from] virtio::ScsiDeviceError),
    #[error("virtio-pci function: {0}")]
    Transport(#[from] virtio::TransportError),
}

/// What the controller is made of, as the command line gave it.
pub struct ControllerConfig<'a> {
    pub disks: &'a [DiskSpec],
    pub num_queues: u16,
    pub queue_size: u16,
    /// Where the queues are served.
    pub serving: QueueServing,
}

/// The threads that serve the queues and the I/O engine each request queue gets.
pub struct QueueServing {
    pub pool: Arc<IothreadPool>,
    pub engines: EngineFactory,
}

impl QueueServing {
    /// Every queue on the main loop, with synchronous I/O: what no `--iothread` and
    /// `--aio sync` give.
    pub fn main_loop(num_queues: u16, log: &Logger) -> std::io::Result<QueueServing> {
        let mapping = QueueMapping {
            ctrl: QueueOwner::MainLoop,
            event: QueueOwner::MainLoop,
            request: vec![QueueOwner::MainLoop; usize::from(num_queues)],
        };
        Ok(QueueServing {
            pool: Arc::new(IothreadPool::start(&[], mapping, 0, log)?),
            engines: Arc::new(|| Ok(Box::new(block::SyncEngine::new()?))),
        })
    }
}

/// The default disk's memory file, and the path its `Disk` opened it by.
pub struct TemporaryDisk {
    pub file: File,
    pub path: PathBuf,
}

/// A controller and what must live as long as it does.
pub struct Controller {
    pub function: VirtioFunction<ScsiDevice>,
    /// The memory file behind the default disk; it disappears when closed.
    pub temporary_disk: Option<TemporaryDisk>,
}

pub fn build(
    config: &ControllerConfig,
    memory: DmaMemory,
    log: &Logger,
) -> Result<Controller, ControllerError> {
    let mut temporary_disk = None;
    let mut luns = Vec::new();
    if config.disks.is_empty() {
        let (file, path) = create_temporary_disk()?;
        let disk = Arc::new(Disk::open(&DiskOptions::new(&path))?);
        info!(log, "serving a temporary disk"; "lun" => 0, "size" => DEFAULT_DISK_SIZE,
            "backing" => "memory");
        luns.push((lun_config(0, &disk, serial_for("temporary", 0)), disk));
        temporary_disk = Some(TemporaryDisk { file, path });
    } else {
        let numbers = assign_luns(config.disks)?;
        for (spec, lun) in config.disks.iter().zip(numbers) {
            luns.push(open_lun(spec, lun, log)?);
        }
    }
    let pool = Arc::clone(&config.serving.pool);
    let device = ScsiDevice::new(ScsiDeviceConfig {
        num_queues: config.num_queues,
        queue_size: config.queue_size,
        luns,
        queue_host: pool.clone(),
        engines: Arc::clone(&config.serving.engines),
        logger: log.clone(),
    })?;
    let function = VirtioPciFunction::new(device, PCI_CLASS, memory, log.clone())?;
    Ok(Controller {
        function: VirtioFunction::new(function, pool, log.clone()),
        temporary_disk,
    })
}

/// Opens the disk a `--disk` (or `ctl add-disk`) spec names, as LUN `lun`.
pub fn open_lun(
    spec: &DiskSpec,
    lun: u16,
    log: &Logger,
) -> Result<(LunConfig, Arc<Disk>), ControllerError> {
    let disk = Arc::new(open_disk(spec)?.with_error_policy(spec.error_policy));
    let serial = match (&spec.serial, &spec.backing) {
        (Some(serial), _) => serial.clone(),
        (None, Backing::File { path, .. }) => serial_for(&canonical(path), lun),
        (None, Backing::Null { .. }) => serial_for("null", lun),
    };
    info!(log, "disk"; "lun" => lun, "size" => disk.size(), "read_only" => disk.read_only(),
          "path" => disk.path().map(|p| p.display().to_string()).unwrap_or_else(|| "null".into()));
    Ok((lun_config(lun, &disk, serial), disk))
}

fn open_disk(spec: &DiskSpec) -> Result<Disk, block::BlockError> {
    match &spec.backing {
        Backing::Null { size, latency_us } => Disk::null_with_latency(
            *size,
            spec.logical_block_size,
            Duration::from_micros(*latency_us),
        ),
        Backing::File {
            path,
            cache,
            discard,
            locking,
        } => Disk::open(&DiskOptions {
            path: path.clone(),
            read_only: spec.read_only,
            cache: *cache,
            discard: *discard,
            logical_block_size: spec.logical_block_size,
            locking: *locking,
        }),
    }
}

fn lun_config(lun: u16, disk: &Disk, serial: String) -> LunConfig {
    let block_size = disk.logical_block_size();
    LunConfig {
        lun,
        block_count: disk.size() / u64::from(block_size),
        block_size,
        read_only: disk.read_only(),
        discard: disk.discard_supported(),
        write_zeroes: disk.write_zeroes_supported(),
        serial,
        rotational: false,
        optimal_transfer_blocks: 0,
        max_transfer_blocks: MAX_TRANSFER_BYTES / block_size,
    }
}

/// A sparse file in memory (memfd), reachable by path through /proc while the process holds it.
/// Not an unlinked file on a disk: the kernel would write its blocks back for nothing, and its
/// last close frees them all, one discard per extent on a file system mounted with `discard`,
/// which kept a loaded host's server in close() at exit for a minute after a short fio run.
fn create_temporary_disk() -> Result<(File, PathBuf), ControllerError> {
    // SAFETY: memfd_create reads the NUL-terminated name and returns a new descriptor or -1.
    let fd =
        unsafe { libc::memfd_create(c"vfio-user-scsi-temporary-disk".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(ControllerError::TemporaryDisk(
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: `fd` was just created and nothing else owns it.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(DEFAULT_DISK_SIZE)
        .map_err(ControllerError::TemporaryDisk)?;
    let path = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
    Ok((file, path))
}

fn canonical(path: &Path) -> String {
    std::fs::canonicalize(path)
        .unwrap_or_else(|_| path.to_path_buf())
        .display()
        .to_string()
}

/// A serial that stays the same across restarts for the same backing file and LUN, so the
/// guest's by-id names and multipath identities do not move.
fn serial_for(origin: &str, lun: u16) -> String {
    // FNV-1a: tiny, and unlike std's hasher its output is fixed forever.
    let hash = origin
        .bytes()
        .chain(lun.to_le_bytes())
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
    format!("VUS{hash:016X}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_are_stable_distinct_and_valid() {
        let a = serial_for("/var/lib/a.img", 0);
        assert_eq!(a, serial_for("/var/lib/a.img", 0));
        assert_ne!(a, serial_for("/var/lib/a.img", 1));
        assert_ne!(a, serial_for("/var/lib/b.img", 0));
        assert_eq!(a.len(), 19);
        assert!(a.bytes().all(|b| b.is_ascii_alphanumeric()));
    }

    #[test]
    fn temporary_disk_is_sparse_openable_and_in_memory() {
        let (file, path) = create_temporary_disk().unwrap();
        let disk = Disk::open(&DiskOptions::new(&path)).unwrap();
        assert_eq!(disk.size(), DEFAULT_DISK_SIZE);
        use std::os::unix::fs::MetadataExt;
        assert_eq!(file.metadata().unwrap().blocks(), 0);
        // On a disk file system, its last close would free every block the guest wrote.
        // SAFETY: fstatfs fills the statfs it is given, for a descriptor the test holds.
        let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::fstatfs(file.as_raw_fd(), &mut fs) }, 0);
        assert_eq!(
            fs.f_type,
            libc::TMPFS_MAGIC,
            "memfd lives on the kernel's shmem mount"
        );
    }

    #[test]
    fn default_controller_has_one_lun_and_the_queues_asked_for() {
        let log = Logger::root(slog::Discard, slog::o!());
        let memory = DmaMemory::new(vm_memory::GuestMemoryMmap::new());
        let config = ControllerConfig {
            disks: &[],
            num_queues: 3,
            queue_size: 128,
            serving: QueueServing::main_loop(3, &log).unwrap(),
        };
        let controller = build(&config, memory, &log).unwrap();
        let function = controller.function.function();
        assert_eq!(function.msix_vectors().count(), 3 + 3);
        assert_eq!(function.queue_notify_addresses().len(), 5);
    }

    #[test]
    fn explicit_luns_and_errors() {
        let log = Logger::root(slog::Discard, slog::o!());
        let memory = DmaMemory::new(vm_memory::GuestMemoryMmap::new());
        let disks: Vec<DiskSpec> = ["null,size=1M,lun=2", "null,size=1M,lun=2"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let config = ControllerConfig {
            disks: &disks,
            num_queues: 1,
            queue_size: 128,
            serving: QueueServing::main_loop(1, &log).unwrap(),
        };
        let error = build(&config, memory.clone(), &log).err().unwrap();
        assert_eq!(
            error.to_string(),
            "--disk number 1 and --disk number 2 both use lun 2"
        );

        let missing: Vec<DiskSpec> = vec!["path=/nonexistent/disk.img".parse().unwrap()];
        let config = ControllerConfig {
            disks: &missing,
            num_queues: 1,
            queue_size: 128,
            serving: QueueServing::main_loop(1, &log).unwrap(),
        };
        let error = build(&config, memory, &log).err().unwrap();
        assert!(
            error.to_string().contains("/nonexistent/disk.img"),
            "{error}"
        );
    }
}
