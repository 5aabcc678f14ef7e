//! The listening socket: bound at a path (refused while a live server holds the lock file beside
//! it, replaced when stale, created with the mode and owner asked for, removed when the server
//! ends) or inherited from systemd's socket activation.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

/// `sun_path` holds 108 bytes with the terminating NUL.
const MAX_SOCKET_PATH: usize = 108;

#[derive(Debug, thiserror::Error)]
pub enum SocketPathError {
    #[error("{0}: a server is already listening there (its lock file {0}.lock is held)")]
    InUse(PathBuf),
    #[error("{0}: exists and is not a socket")]
    NotASocket(PathBuf),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("socket activation: LISTEN_FDS={listen_fds:?}, expected exactly one socket")]
    ActivationFdCount { listen_fds: String },
    #[error("socket activation: file descriptor 3 is not a stream socket (ListenStream= in the .socket unit)")]
    ActivationNotStream,
    #[error("socket activation: {0}")]
    ActivationIo(io::Error),
}

/// Who may connect to a socket the server creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketAccess {
    /// Permission bits of the socket file.
    pub mode: u32,
    /// Owner and group to give the socket file; `None` keeps the server's.
    pub owner: Option<(libc::uid_t, libc::gid_t)>,
}

impl Default for SocketAccess {
    fn default() -> Self {
        SocketAccess {
            mode: 0o600,
            owner: None,
        }
    }
}

/// The socket file of a listening server and the lock that says it is live; dropping it
/// removes the socket and releases the lock. The lock file stays: removing it could let two
/// servers lock two different files of the same name.
#[derive(Debug)]
pub struct BoundSocket {
    path: PathBuf,
    _lock: File,
}

impl BoundSocket {
    /// Binds `path` and returns the guard that removes it with the non-blocking listener.
    ///
    /// Whether another server is live is decided by the lock file `PATH.lock`, never by
    /// connecting: a probe connection would show up in the live server's log as a client.
    pub fn bind(
        path: &Path,
        access: &SocketAccess,
    ) -> Result<(BoundSocket, UnixListener), SocketPathError> {
        let io_err = |source| SocketPathError::Io {
            path: path.to_owned(),
            source,
        };
        let mut lock_path = path.as_os_str().to_owned();
        lock_path.push(".lock");
        let lock_path = PathBuf::from(lock_path);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|source| SocketPathError::Io {
                path: lock_path.clone(),
                source,
            })?;
        // SAFETY: flock on a descriptor we own; the lock lives as long as the file.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let error = io::Error::last_os_error();
            return Err(if error.kind() == io::ErrorKind::WouldBlock {
                SocketPathError::InUse(path.to_owned())
            } else {
                SocketPathError::Io {
                    path: lock_path,
                    source: error,
                }
            });
        }
        match std::fs::symlink_metadata(path) {
            Ok(meta) if !meta.file_type().is_socket() => {
                return Err(SocketPathError::NotASocket(path.to_owned()))
            }
            // The lock is ours, so whoever bound this socket is gone.
            Ok(_) => std::fs::remove_file(path).map_err(io_err)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(e)),
        }
        // The socket is bound under a name of its own and renamed into place once it listens, so
        // that `path` appears only when a connect to it succeeds: a script or QEMU that waits
        // for the path to exist would otherwise connect between bind() and listen() and be
        // refused. The staging name is covered by our lock; a path too long to take its suffix,
        // or one whose staging name is taken by something else than a socket, is bound in place.
        let mut staged = path.as_os_str().to_owned();
        staged.push(".new");
        let staged = PathBuf::from(staged);
        let bind_at = match std::fs::symlink_metadata(&staged) {
            _ if staged.as_os_str().len() >= MAX_SOCKET_PATH => path,
            Err(e) if e.kind() == io::ErrorKind::NotFound => staged.as_path(),
            Ok(meta) if meta.file_type().is_socket() => {
                std::fs::remove_file(&staged).map_err(|source| SocketPathError::Io {
                    path: staged.clone(),
                    source,
                })?;
                staged.as_path()
            }
            _ => path,
        };
        // Bind under a umask that leaves only the owner's bits, so the socket is never reachable
        // by others before its owner and mode are set.
        // SAFETY: umask only swaps the process's file creation mask.
        let old_mask = unsafe { libc::umask(0o177) };
        let bound = UnixListener::bind(bind_at);
        // SAFETY: as above, restoring the previous mask.
        unsafe { libc::umask(old_mask) };
        let listener = bound.map_err(io_err)?;
        let mut guard = BoundSocket {
            path: bind_at.to_owned(),
            _lock: lock,
        };
        if let Some((uid, gid)) = access.owner {
            std::os::unix::fs::lchown(bind_at, Some(uid), Some(gid)).map_err(io_err)?;
        }
        std::fs::set_permissions(bind_at, std::fs::Permissions::from_mode(access.mode))
            .map_err(io_err)?;
        std::fs::rename(bind_at, path).map_err(io_err)?;
        guard.path = path.to_owned();
        listener.set_nonblocking(true).map_err(io_err)?;
        Ok((guard, listener))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for BoundSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The socket systemd passed (LISTEN_PID/LISTEN_FDS, sd_listen_fds(3)), if it passed one to
/// this process. The variables are removed so that children do not see them.
pub fn activated_listener() -> Result<Option<UnixListener>, SocketPathError> {
    const FIRST_FD: i32 = 3;
    let Ok(pid) = std::env::var("LISTEN_PID") else {
        return Ok(None);
    };
    if pid.parse::<u32>().ok() != Some(std::process::id()) {
        return Ok(None);
    }
    let count = std::env::var("LISTEN_FDS").unwrap_or_default();
    std::env::remove_var("LISTEN_PID");
    std::env::remove_var("LISTEN_FDS");
    std::env::remove_var("LISTEN_FDNAMES");
    match count.parse::<i32>() {
        Ok(1) => {}
        _ => return Err(SocketPathError::ActivationFdCount { listen_fds: count }),
    }
    let mut kind: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `kind`, an int.
    let rc = unsafe {
        libc::getsockopt(
            FIRST_FD,
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&mut kind as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 || kind != libc::SOCK_STREAM {
        return Err(SocketPathError::ActivationNotStream);
    }
    // SAFETY: systemd hands this descriptor to us alone; nothing else in the process owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(FIRST_FD) };
    // SAFETY: fcntl on a descriptor we own, setting close-on-exec.
    unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
    let listener = UnixListener::from(fd);
    listener
        .set_nonblocking(true)
        .map_err(SocketPathError::ActivationIo)?;
    Ok(Some(listener))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_refuses_a_live_path_stale_replaced_mode_set_removed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let first = BoundSocket::bind(&path, &SocketAccess::default()).unwrap();
        assert!(std::os::unix::net::UnixStream::connect(&path).is_ok());
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let error = BoundSocket::bind(&path, &SocketAccess::default()).unwrap_err();
        assert!(matches!(error, SocketPathError::InUse(_)), "{error}");
        assert!(error.to_string().contains("s.sock.lock"), "{error}");
        // A socket file nobody holds the lock of is stale.
        let stale = UnixListener::bind(dir.path().join("stale.sock")).unwrap();
        drop(stale);
        let access = SocketAccess {
            mode: 0o660,
            owner: None,
        };
        let replaced = BoundSocket::bind(&dir.path().join("stale.sock"), &access).unwrap();
        assert_eq!(
            std::fs::metadata(dir.path().join("stale.sock"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o660
        );
        drop(replaced);
        assert!(!dir.path().join("stale.sock").exists());
        drop(first);
        assert!(!path.exists());
        std::fs::write(&path, b"x").unwrap();
        assert!(matches!(
            BoundSocket::bind(&path, &SocketAccess::default()),
            Err(SocketPathError::NotASocket(_))
        ));
    }

    #[test]
    fn the_path_appears_listening_and_the_staging_name_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let staged = dir.path().join("s.sock.new");
        // A staging socket left by a server that died between bind and rename is replaced.
        drop(UnixListener::bind(&staged).unwrap());
        let (_bound, _listener) = BoundSocket::bind(&path, &SocketAccess::default()).unwrap();
        assert!(std::os::unix::net::UnixStream::connect(&path).is_ok());
        assert!(!staged.exists());
    }

    #[test]
    fn a_staging_name_that_is_not_a_socket_is_left_alone_and_the_path_bound_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let staged = dir.path().join("s.sock.new");
        std::fs::write(&staged, b"keep").unwrap();
        let (_bound, _listener) = BoundSocket::bind(&path, &SocketAccess::default()).unwrap();
        assert!(std::os::unix::net::UnixStream::connect(&path).is_ok());
        assert_eq!(std::fs::read(&staged).unwrap(), b"keep");
    }

    #[test]
    fn a_path_too_long_for_the_staging_suffix_is_bound_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let room = MAX_SOCKET_PATH - 2 - dir.path().as_os_str().len() - 1;
        let path = dir.path().join("s".repeat(room));
        assert!(path.as_os_str().len() + ".new".len() >= MAX_SOCKET_PATH);
        let (bound, _listener) = BoundSocket::bind(&path, &SocketAccess::default()).unwrap();
        assert!(std::os::unix::net::UnixStream::connect(&path).is_ok());
        drop(bound);
        assert!(!path.exists());
    }
}
