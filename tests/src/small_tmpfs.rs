//! A tmpfs of a few hundred KiB mounted on a temporary directory, for a disk image that runs out
//! of space for real: writes past the file system's size fail with ENOSPC from the kernel, as on
//! a full host file system. Mounting needs root; without it `mount` says so.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use tempfile::TempDir;

#[derive(Debug, thiserror::Error)]
pub enum SmallTmpfsError {
    #[error("mounting a tmpfs needs root (euid {0}); run the fault tests as root, as CI does")]
    NotRoot(u32),
    #[error("cannot create a mount point: {0}")]
    TempDir(io::Error),
    #[error("mount -t tmpfs on {path}: {source}")]
    Mount { path: PathBuf, source: io::Error },
}

/// A mounted tmpfs; lazily unmounted on drop.
pub struct SmallTmpfs {
    mount: TempDir,
}

impl SmallTmpfs {
    /// Mounts a tmpfs that holds at most `size` bytes of data.
    pub fn mount(size: u64) -> Result<SmallTmpfs, SmallTmpfsError> {
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        if euid != 0 {
            return Err(SmallTmpfsError::NotRoot(euid));
        }
        let mount = tempfile::tempdir().map_err(SmallTmpfsError::TempDir)?;
        let mount_error = |source| SmallTmpfsError::Mount {
            path: mount.path().to_path_buf(),
            source,
        };
        let target = CString::new(mount.path().as_os_str().as_bytes())
            .map_err(|_| mount_error(io::Error::from(io::ErrorKind::InvalidInput)))?;
        let options = CString::new(format!("size={size},mode=0700")).unwrap_or_default();
        // SAFETY: every pointer is a NUL-terminated string that lives across the call.
        let ret = unsafe {
            libc::mount(
                c"vus-small-tmpfs".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                options.as_ptr().cast(),
            )
        };
        if ret != 0 {
            return Err(mount_error(io::Error::last_os_error()));
        }
        Ok(SmallTmpfs { mount })
    }

    pub fn path(&self) -> &Path {
        self.mount.path()
    }
}

impl Drop for SmallTmpfs {
    fn drop(&mut self) {
        if let Ok(target) = CString::new(self.mount.path().as_os_str().as_bytes()) {
            // SAFETY: target is a NUL-terminated path; a lazy unmount lets a server that still
            // holds the image open finish with it.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        }
    }
}
