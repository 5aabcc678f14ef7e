//! Starting the `vfio-user-scsi` binary for a test.
//!
//! Tests in this crate cannot use `CARGO_BIN_EXE_` of another package, so the test command must
//! build the server first, for example
//! `cargo build -p server && cargo test -p tests`. The binary is looked up in `$VUS_SERVER_BIN`,
//! then in `$CARGO_TARGET_DIR/{debug,release}`, then in `<workspace>/target/{debug,release}`;
//! when several exist the most recently built one wins.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

pub const SERVER_BIN_ENV: &str = "VUS_SERVER_BIN";
const BINARY_NAME: &str = "vfio-user-scsi";

#[derive(Debug, thiserror::Error)]
pub enum ServerProcessError {
    #[error(
        "the vfio-user-scsi binary was not found (looked in: {searched}); build it first with \
         `cargo build -p server` (same CARGO_TARGET_DIR) or set {SERVER_BIN_ENV}"
    )]
    BinaryMissing { searched: String },
    #[error("cannot start {binary}: {source}")]
    Spawn { binary: PathBuf, source: io::Error },
    #[error("temporary directory: {0}")]
    TempDir(io::Error),
    #[error("the server exited with {status} before listening; its stderr:\n{stderr}")]
    ExitedEarly { status: ExitStatus, stderr: String },
    #[error("the server did not listen on {socket} within {timeout:?}; its stderr:\n{stderr}")]
    NotListening {
        socket: PathBuf,
        timeout: Duration,
        stderr: String,
    },
    #[error("waiting for the server: {0}")]
    Wait(io::Error),
    #[error("the server did not exit within {0:?}")]
    StillRunning(Duration),
}

/// What a process holds, for telling a leak from noise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub rss_kib: u64,
    pub fds: usize,
    pub threads: usize,
}

/// A process's resident memory, open fds and threads.
pub fn usage(pid: u32) -> Usage {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let count = |dir: &str| fs::read_dir(format!("/proc/{pid}/{dir}")).map_or(0, Iterator::count);
    Usage {
        rss_kib,
        fds: count("fd"),
        threads: count("task"),
    }
}

/// The usage once the server has released its last client: fds and threads have not changed
/// for a quarter of a second (or 5 s have passed).
pub fn settled_usage(pid: u32) -> Usage {
    let started = Instant::now();
    let mut last = usage(pid);
    let mut unchanged = 0;
    while unchanged < 5 && started.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
        let now = usage(pid);
        if (now.fds, now.threads) == (last.fds, last.threads) {
            unchanged += 1;
        } else {
            unchanged = 0;
        }
        last = now;
    }
    last
}

/// A sparse backing file `disk.img` of `size` bytes in a temporary directory of its own.
pub fn sparse_image(size: u64) -> io::Result<(TempDir, PathBuf)> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("disk.img");
    File::create(&path)?.set_len(size)?;
    Ok((dir, path))
}

/// Finds the server binary, or says where it looked.
pub fn server_binary() -> Result<PathBuf, ServerProcessError> {
    if let Some(path) = std::env::var_os(SERVER_BIN_ENV) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(ServerProcessError::BinaryMissing {
                searched: path.display().to_string(),
            })
        };
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or_else(|| Path::new("."))
        .to_path_buf();
    let mut roots = Vec::new();
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        let dir = PathBuf::from(dir);
        roots.push(if dir.is_absolute() {
            dir
        } else {
            workspace.join(dir)
        });
    }
    roots.push(workspace.join("target"));
    let candidates: Vec<PathBuf> = roots
        .iter()
        .flat_map(|root| ["debug", "release"].map(|profile| root.join(profile).join(BINARY_NAME)))
        .collect();
    candidates
        .iter()
        .filter_map(|path| {
            let modified = fs::metadata(path).and_then(|m| m.modified()).ok()?;
            Some((modified, path))
        })
        .max_by_key(|(modified, _)| *modified)
        .map(|(_, path)| path.clone())
        .ok_or_else(|| ServerProcessError::BinaryMissing {
            searched: candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// `vfio-user-scsi ctl SOCKET ARGS`: its exit status and its reply line.
pub fn ctl(socket: &Path, args: &[&str]) -> Result<(Option<i32>, String), ServerProcessError> {
    let binary = server_binary()?;
    let output = Command::new(&binary)
        .arg("ctl")
        .arg(socket)
        .args(args)
        .output()
        .map_err(|source| ServerProcessError::Spawn { binary, source })?;
    Ok((
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).trim().to_string(),
    ))
}

/// A running server on a socket in its own temporary directory; killed on drop.
pub struct ServerProcess {
    child: Child,
    socket: PathBuf,
    stderr_path: PathBuf,
    dir: TempDir,
}

impl ServerProcess {
    /// Starts the server with `--socket <tempdir>/vus.sock` followed by `args`, and waits until
    /// the socket exists.
    pub fn start(args: &[&str]) -> Result<Self, ServerProcessError> {
        Self::start_with_timeout(args, Duration::from_secs(20))
    }

    pub fn start_with_timeout(
        args: &[&str],
        timeout: Duration,
    ) -> Result<Self, ServerProcessError> {
        Self::start_under(&[], args, timeout)
    }

    /// The same, run by `wrapper` (a command and its arguments, such as a profiler, that
    /// executes the server in its own process), or directly when it is empty.
    pub fn start_under(
        wrapper: &[&str],
        args: &[&str],
        timeout: Duration,
    ) -> Result<Self, ServerProcessError> {
        let dir = tempfile::Builder::new()
            .prefix("vus-test-")
            .tempdir()
            .map_err(ServerProcessError::TempDir)?;
        let socket = dir.path().join("vus.sock");
        let mut process = Self::spawn(dir, &socket, wrapper, args)?;
        let started = Instant::now();
        loop {
            if let Some(status) = process.child.try_wait().map_err(ServerProcessError::Wait)? {
                return Err(ServerProcessError::ExitedEarly {
                    status,
                    stderr: process.stderr(),
                });
            }
            // No probe connection: the server serves one client at a time and a probe would be
            // that client. The socket appears at bind(); connect() retries the short gap to listen().
            if socket.exists() {
                return Ok(process);
            }
            if started.elapsed() > timeout {
                return Err(ServerProcessError::NotListening {
                    socket,
                    timeout,
                    stderr: process.stderr(),
                });
            }
            // Fine-grained, so that the bench's start-up times mean something.
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Runs the server with `args` (no `--socket` added) until it exits; for command-line tests.
    /// Returns the exit status and stderr.
    pub fn run_to_exit(
        args: &[&str],
        timeout: Duration,
    ) -> Result<(ExitStatus, String), ServerProcessError> {
        let dir = tempfile::Builder::new()
            .prefix("vus-test-")
            .tempdir()
            .map_err(ServerProcessError::TempDir)?;
        let mut process = Self::spawn_raw(dir, PathBuf::new(), &[], args)?;
        let started = Instant::now();
        loop {
            if let Some(status) = process.child.try_wait().map_err(ServerProcessError::Wait)? {
                return Ok((status, process.stderr()));
            }
            if started.elapsed() > timeout {
                return Err(ServerProcessError::StillRunning(timeout));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn spawn(
        dir: TempDir,
        socket: &Path,
        wrapper: &[&str],
        args: &[&str],
    ) -> Result<Self, ServerProcessError> {
        let mut full: Vec<&str> = vec!["--socket"];
        let socket_str = socket.to_string_lossy().into_owned();
        full.push(&socket_str);
        full.extend_from_slice(args);
        Self::spawn_raw(dir, socket.to_path_buf(), wrapper, &full)
    }

    fn spawn_raw(
        dir: TempDir,
        socket: PathBuf,
        wrapper: &[&str],
        args: &[&str],
    ) -> Result<Self, ServerProcessError> {
        let binary = server_binary()?;
        let stderr_path = dir.path().join("server.stderr");
        let spawn_error = |source| ServerProcessError::Spawn {
            binary: binary.clone(),
            source,
        };
        let stderr = File::create(&stderr_path).map_err(spawn_error)?;
        let mut command = match wrapper.split_first() {
            Some((program, wrapper_args)) => {
                let mut command = Command::new(program);
                command.args(wrapper_args).arg(&binary);
                command
            }
            None => Command::new(&binary),
        };
        let child = command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(spawn_error)?;
        Ok(ServerProcess {
            child,
            socket,
            stderr_path,
            dir,
        })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The temporary directory the server runs in (backing files can be created here).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the server wrote to stderr so far (its logs), for failure messages.
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends SIGTERM and waits up to `timeout` for a clean exit.
    pub fn terminate(&mut self, timeout: Duration) -> Result<ExitStatus, ServerProcessError> {
        let pid = libc::pid_t::try_from(self.child.id()).map_err(|_| {
            ServerProcessError::Wait(io::Error::new(
                io::ErrorKind::InvalidInput,
                "pid out of range",
            ))
        })?;
        // SAFETY: kill(2) on our own child's pid, which has not been reaped yet.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        self.wait_exit(timeout)
    }

    /// Waits up to `timeout` for the process to exit. A process whose sockets were seen to
    /// close may still be exiting: the kernel closes its files before it can be reaped.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus, ServerProcessError> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().map_err(ServerProcessError::Wait)? {
                return Ok(status);
            }
            if started.elapsed() > timeout {
                return Err(ServerProcessError::StillRunning(timeout));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        // The process may already have exited; both calls are then harmless.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
