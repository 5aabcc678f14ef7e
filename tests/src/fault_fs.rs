//! A FUSE file system holding one disk image whose reads, writes and fsyncs fail on demand.
//!
//! The server opens `disk.img` in the mount like any backing file, so its real engines and error
//! paths see real errnos from the kernel: an fsync that fails is a failed fdatasync, as after a
//! writeback error on a real disk. It speaks the kernel's FUSE protocol on `/dev/fuse` itself
//! (no libfuse) and mounts with mount(2), so it needs root. Files are opened with
//! FOPEN_DIRECT_IO: no page cache, every request reaches this file system.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tempfile::TempDir;

const ROOT_ID: u64 = 1;
const IMAGE_ID: u64 = 2;
pub const IMAGE_NAME: &str = "disk.img";

const FUSE_LOOKUP: u32 = 1;
const FUSE_FORGET: u32 = 2;
const FUSE_GETATTR: u32 = 3;
const FUSE_OPEN: u32 = 14;
const FUSE_READ: u32 = 15;
const FUSE_WRITE: u32 = 16;
const FUSE_STATFS: u32 = 17;
const FUSE_RELEASE: u32 = 18;
const FUSE_FSYNC: u32 = 20;
const FUSE_FLUSH: u32 = 25;
const FUSE_INIT: u32 = 26;
const FUSE_INTERRUPT: u32 = 36;
const FUSE_DESTROY: u32 = 38;
const FUSE_BATCH_FORGET: u32 = 42;

const IN_HEADER_LEN: usize = 40;
const OUT_HEADER_LEN: usize = 16;
const FOPEN_DIRECT_IO: u32 = 1;
const MAX_WRITE: u32 = 128 * 1024;

/// Which operations fail and with which errno (0: they succeed).
#[derive(Debug, Default)]
pub struct Faults {
    read: AtomicI32,
    write: AtomicI32,
    fsync: AtomicI32,
    fsyncs: AtomicU64,
    hold_writes: AtomicBool,
    hold_fsyncs: AtomicBool,
    /// Requests held unanswered, by their FUSE `unique`.
    held: Mutex<Vec<u64>>,
}

impl Faults {
    pub fn fail_reads(&self, errno: i32) {
        self.read.store(errno, Ordering::SeqCst);
    }

    pub fn fail_writes(&self, errno: i32) {
        self.write.store(errno, Ordering::SeqCst);
    }

    pub fn fail_fsyncs(&self, errno: i32) {
        self.fsync.store(errno, Ordering::SeqCst);
    }

    /// Leaves writes unanswered, as a hung backend does, until [`FaultFs::release_held`].
    pub fn hold_writes(&self) {
        self.hold_writes.store(true, Ordering::SeqCst);
    }

    /// Leaves fsyncs unanswered, as a hung backend does, until [`FaultFs::release_held`].
    pub fn hold_fsyncs(&self) {
        self.hold_fsyncs.store(true, Ordering::SeqCst);
    }

    /// Whether requests with `opcode` are to be left unanswered.
    fn holds(&self, opcode: u32) -> bool {
        let hold = match opcode {
            FUSE_WRITE => &self.hold_writes,
            FUSE_FSYNC => &self.hold_fsyncs,
            _ => return false,
        };
        hold.load(Ordering::SeqCst)
    }

    /// How many requests are held unanswered.
    pub fn held(&self) -> usize {
        self.held.lock().map_or(0, |held| held.len())
    }

    /// How many fsync requests reached the file system.
    pub fn fsyncs(&self) -> u64 {
        self.fsyncs.load(Ordering::SeqCst)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FaultFsError {
    #[error("temporary directory: {0}")]
    TempDir(io::Error),
    #[error("cannot open /dev/fuse (the fault tests need root and the fuse module): {0}")]
    OpenDevice(io::Error),
    #[error("cannot mount the fault file system on {path} (needs root): {source}")]
    Mount { path: PathBuf, source: io::Error },
    #[error("cannot start the file system thread: {0}")]
    Thread(io::Error),
}

/// A mounted fault file system; unmounted on drop.
pub struct FaultFs {
    mount: TempDir,
    device: Arc<File>,
    faults: Arc<Faults>,
    thread: Option<JoinHandle<()>>,
}

impl FaultFs {
    /// Mounts a file system with one zero-filled image of `size` bytes.
    pub fn mount(size: u64) -> Result<FaultFs, FaultFsError> {
        let mount = tempfile::tempdir().map_err(FaultFsError::TempDir)?;
        let device = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/fuse")
            .map_err(FaultFsError::OpenDevice)?;
        let options = format!(
            "fd={},rootmode=40000,user_id=0,group_id=0,allow_other",
            device.as_raw_fd()
        );
        let mount_error = |source| FaultFsError::Mount {
            path: mount.path().to_path_buf(),
            source,
        };
        let target = CString::new(mount.path().as_os_str().as_bytes())
            .map_err(|_| mount_error(io::Error::from(io::ErrorKind::InvalidInput)))?;
        let options = CString::new(options).unwrap_or_default();
        // SAFETY: every pointer is a NUL-terminated string that lives across the call.
        let ret = unsafe {
            libc::mount(
                c"vus-fault-fs".as_ptr(),
                target.as_ptr(),
                c"fuse".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                options.as_ptr().cast(),
            )
        };
        if ret != 0 {
            return Err(mount_error(io::Error::last_os_error()));
        }
        let faults = Arc::new(Faults::default());
        let device = Arc::new(device);
        let mut server = FsServer {
            device: Arc::clone(&device),
            faults: Arc::clone(&faults),
            image: Mutex::new(vec![0; size as usize]),
        };
        let thread = std::thread::Builder::new()
            .name("fault-fs".into())
            .spawn(move || server.serve())
            .map_err(FaultFsError::Thread)?;
        Ok(FaultFs {
            mount,
            device,
            faults,
            thread: Some(thread),
        })
    }

    /// The image's path, to give to `--disk path=`.
    pub fn image(&self) -> PathBuf {
        self.mount.path().join(IMAGE_NAME)
    }

    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    pub fn path(&self) -> &Path {
        self.mount.path()
    }

    /// Stops holding writes and fsyncs, and fails the held ones with EIO.
    pub fn release_held(&self) {
        self.faults.hold_writes.store(false, Ordering::SeqCst);
        self.faults.hold_fsyncs.store(false, Ordering::SeqCst);
        let held = self
            .faults
            .held
            .lock()
            .map(|mut held| std::mem::take(&mut *held))
            .unwrap_or_default();
        for unique in held {
            reply(&self.device, unique, Err(libc::EIO));
        }
    }
}

impl Drop for FaultFs {
    fn drop(&mut self) {
        self.release_held();
        if let Ok(target) = CString::new(self.mount.path().as_os_str().as_bytes()) {
            // SAFETY: target is a NUL-terminated path. A lazy unmount ends the connection, which
            // makes the server thread's read fail so that it returns.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct FsServer {
    device: Arc<File>,
    faults: Arc<Faults>,
    image: Mutex<Vec<u8>>,
}

/// A request as the kernel sent it: the header fields we use and the body.
struct FuseRequest<'a> {
    opcode: u32,
    unique: u64,
    node: u64,
    body: &'a [u8],
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    bytes
        .get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u32::from_ne_bytes)
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    bytes
        .get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_ne_bytes)
}

/// Answers request `unique` with a body or an errno.
fn reply(device: &File, unique: u64, reply: Result<Vec<u8>, i32>) {
    let (error, body) = match reply {
        Ok(body) => (0, body),
        Err(errno) => (-errno, Vec::new()),
    };
    let mut message = Body::default()
        .u32((OUT_HEADER_LEN + body.len()) as u32)
        .u32(error as u32)
        .u64(unique)
        .0;
    message.extend_from_slice(&body);
    // A failed write means the kernel gave up on this request (interrupted or unmounted).
    let mut device = device;
    let _ = device.write_all(&message);
}

/// Little builder for reply bodies in the kernel's native layout.
#[derive(Default)]
struct Body(Vec<u8>);

impl Body {
    fn u16(mut self, value: u16) -> Self {
        self.0.extend_from_slice(&value.to_ne_bytes());
        self
    }
    fn u32(mut self, value: u32) -> Self {
        self.0.extend_from_slice(&value.to_ne_bytes());
        self
    }
    fn u64(mut self, value: u64) -> Self {
        self.0.extend_from_slice(&value.to_ne_bytes());
        self
    }
    fn zeroes(mut self, len: usize) -> Self {
        self.0.resize(self.0.len() + len, 0);
        self
    }
}

impl FsServer {
    fn serve(&mut self) {
        let mut buffer = vec![0u8; MAX_WRITE as usize + 64 * 1024];
        loop {
            let len = match (&*self.device).read(&mut buffer) {
                Ok(len) => len,
                Err(error) if error.raw_os_error() == Some(libc::EINTR) => continue,
                Err(error) if error.raw_os_error() == Some(libc::ENOENT) => continue,
                Err(_) => return,
            };
            let bytes = &buffer[..len];
            if bytes.len() < IN_HEADER_LEN {
                continue;
            }
            let request = FuseRequest {
                opcode: u32_at(bytes, 4),
                unique: u64_at(bytes, 8),
                node: u64_at(bytes, 16),
                body: &bytes[IN_HEADER_LEN..],
            };
            let answer = match request.opcode {
                FUSE_FORGET | FUSE_BATCH_FORGET | FUSE_INTERRUPT => continue,
                FUSE_DESTROY => return,
                opcode if self.faults.holds(opcode) => {
                    if let Ok(mut held) = self.faults.held.lock() {
                        held.push(request.unique);
                    }
                    continue;
                }
                _ => self.answer(&request),
            };
            reply(&self.device, request.unique, answer);
        }
    }

    fn answer(&self, request: &FuseRequest) -> Result<Vec<u8>, i32> {
        match request.opcode {
            FUSE_INIT => Ok(Body::default()
                .u32(7)
                .u32(31)
                .u32(0)
                .u32(0)
                .u16(16)
                .u16(12)
                .u32(MAX_WRITE)
                .u32(1)
                .u16(0)
                .u16(0)
                .u32(0)
                .zeroes(28)
                .0),
            FUSE_LOOKUP => {
                let name = request.body.split(|&b| b == 0).next().unwrap_or_default();
                if request.node != ROOT_ID || name != IMAGE_NAME.as_bytes() {
                    return Err(libc::ENOENT);
                }
                let entry = Body::default()
                    .u64(IMAGE_ID)
                    .u64(0)
                    .u64(1)
                    .u64(1)
                    .u32(0)
                    .u32(0);
                Ok(self.attr(entry, IMAGE_ID).0)
            }
            FUSE_GETATTR => {
                let out = Body::default().u64(1).u32(0).u32(0);
                Ok(self.attr(out, request.node).0)
            }
            FUSE_OPEN => Ok(Body::default().u64(0).u32(FOPEN_DIRECT_IO).u32(0).0),
            FUSE_READ => {
                let offset = u64_at(request.body, 8) as usize;
                let size = u32_at(request.body, 16) as usize;
                self.fault(&self.faults.read)?;
                let image = self.image.lock().map_err(|_| libc::EIO)?;
                let start = offset.min(image.len());
                let end = offset.saturating_add(size).min(image.len());
                Ok(image[start..end].to_vec())
            }
            FUSE_WRITE => {
                let offset = u64_at(request.body, 8) as usize;
                let size = u32_at(request.body, 16) as usize;
                self.fault(&self.faults.write)?;
                let data = request.body.get(40..40 + size).ok_or(libc::EINVAL)?;
                let mut image = self.image.lock().map_err(|_| libc::EIO)?;
                let end = offset.checked_add(size).ok_or(libc::EFBIG)?;
                if end > image.len() {
                    return Err(libc::ENOSPC);
                }
                image[offset..end].copy_from_slice(data);
                Ok(Body::default().u32(size as u32).u32(0).0)
            }
            FUSE_FSYNC => {
                self.faults.fsyncs.fetch_add(1, Ordering::SeqCst);
                self.fault(&self.faults.fsync)?;
                Ok(Vec::new())
            }
            FUSE_FLUSH | FUSE_RELEASE => Ok(Vec::new()),
            FUSE_STATFS => Ok(Body::default()
                .u64(1 << 20)
                .u64(1 << 20)
                .u64(1 << 20)
                .u64(16)
                .u64(14)
                .u32(4096)
                .u32(255)
                .u32(4096)
                .u32(0)
                .zeroes(24)
                .0),
            _ => Err(libc::ENOSYS),
        }
    }

    fn fault(&self, errno: &AtomicI32) -> Result<(), i32> {
        match errno.load(Ordering::SeqCst) {
            0 => Ok(()),
            errno => Err(errno),
        }
    }

    /// Appends a `fuse_attr` for `node` to `body`.
    fn attr(&self, body: Body, node: u64) -> Body {
        let (size, mode, nlink) = if node == IMAGE_ID {
            let size = self.image.lock().map_or(0, |image| image.len() as u64);
            (size, libc::S_IFREG | 0o644, 1)
        } else {
            (0, libc::S_IFDIR | 0o755, 2)
        };
        body.u64(node)
            .u64(size)
            .u64(size.div_ceil(512))
            .zeroes(3 * 8 + 3 * 4)
            .u32(mode)
            .u32(nlink)
            .u32(0)
            .u32(0)
            .u32(0)
            .u32(4096)
            .u32(0)
    }
}
