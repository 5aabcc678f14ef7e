//! The listening socket's path: refuse one a live server answers on, replace a stale one,
//! create it with mode 0600, remove it when the server ends.

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum SocketPathError {
    #[error("{0}: a server is already listening there")]
    InUse(PathBuf),
    #[error("{0}: exists and is not a socket")]
    NotASocket(PathBuf),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// The socket file of a listening server; dropping it removes the file.
#[derive(Debug)]
pub struct BoundSocket {
    path: PathBuf,
}

impl BoundSocket {
    /// Binds `path` and returns the guard that removes it with the non-blocking listener.
    pub fn bind(path: &Path) -> Result<(BoundSocket, UnixListener), SocketPathError> {
        let io_err = |source| SocketPathError::Io {
            path: path.to_owned(),
            source,
        };
        match std::fs::symlink_metadata(path) {
            Ok(meta) if !meta.file_type().is_socket() => {
                return Err(SocketPathError::NotASocket(path.to_owned()))
            }
            Ok(_) => {
                if UnixStream::connect(path).is_ok() {
                    return Err(SocketPathError::InUse(path.to_owned()));
                }
                std::fs::remove_file(path).map_err(io_err)?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(e)),
        }
        // Bind under a umask that leaves only the owner's bits, so the socket is never reachable
        // by others, not even between bind and chmod.
        // SAFETY: umask only swaps the process's file creation mask.
        let old_mask = unsafe { libc::umask(0o177) };
        let bound = UnixListener::bind(path);
        // SAFETY: as above, restoring the previous mask.
        unsafe { libc::umask(old_mask) };
        let listener = bound.map_err(io_err)?;
        let guard = BoundSocket {
            path: path.to_owned(),
        };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io_err)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_path_refused_stale_replaced_mode_0600_removed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let first = BoundSocket::bind(&path).unwrap();
        assert!(std::os::unix::net::UnixStream::connect(&path).is_ok());
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(matches!(
            BoundSocket::bind(&path),
            Err(SocketPathError::InUse(_))
        ));
        // A socket file nobody listens on is stale.
        let stale = UnixListener::bind(dir.path().join("stale.sock")).unwrap();
        drop(stale);
        let replaced = BoundSocket::bind(&dir.path().join("stale.sock")).unwrap();
        drop(replaced);
        assert!(!dir.path().join("stale.sock").exists());
        drop(first);
        assert!(!path.exists());
        std::fs::write(&path, b"x").unwrap();
        assert!(matches!(
            BoundSocket::bind(&path),
            Err(SocketPathError::NotASocket(_))
        ));
    }
}
