//! Guest tests: boot a VM through `scripts/run-vm.sh`, run a shell script inside it, and hand back
//! its exit status and console output.
//!
//! Nothing here skips: a missing script or environment is an error that names what is missing
//! (`scripts/run-vm.sh` builds the guest environment itself when it is not cached).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Lines of console output a failure message quotes.
const TAIL_LINES: usize = 40;

#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    #[error("{path} does not exist: the guest tests need the workspace's scripts")]
    MissingScript { path: PathBuf },
    #[error("cannot start {path}: {source}")]
    Spawn {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("reading the output of run-vm.sh: {0}")]
    Output(std::io::Error),
    #[error("waiting for run-vm.sh: {0}")]
    Wait(std::io::Error),
}

/// What one `run-vm.sh` invocation produced.
#[derive(Debug)]
pub struct GuestRun {
    /// run-vm.sh's exit status: the guest script's, or 124 (timeout) / 125 (harness failure);
    /// `None` if run-vm.sh was killed by a signal.
    pub status: Option<i32>,
    /// stdout and stderr of run-vm.sh, interleaved as they came: the guest console and its messages.
    pub output: String,
}

impl GuestRun {
    /// The last lines of the output, for failure messages.
    pub fn tail(&self) -> String {
        let lines: Vec<&str> = self.output.lines().collect();
        lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
    }

    /// Panics, quoting the end of the output, unless run-vm.sh exited with `expected`.
    pub fn assert_status(&self, expected: i32) {
        assert_eq!(
            self.status,
            Some(expected),
            "run-vm.sh exited with {:?}, expected {expected}; last lines of its output:\n{}",
            self.status,
            self.tail()
        );
    }

    /// Panics, quoting the end of the output, unless some output line contains `needle`.
    pub fn assert_line_contains(&self, needle: &str) {
        assert!(
            self.output.lines().any(|line| line.contains(needle)),
            "no output line contains {needle:?}; last lines of the output:\n{}",
            self.tail()
        );
    }
}

/// The workspace root (the parent of this crate's folder).
pub fn repo_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

/// Runs `scripts/run-vm.sh ARGS -- GUEST_SCRIPT`, echoing its output as it arrives (the test
/// harness shows it when a test fails) and collecting it.
pub fn run_vm(args: &[&str], guest_script: &str) -> Result<GuestRun, GuestError> {
    let script = repo_root().join("scripts/run-vm.sh");
    if !script.is_file() {
        return Err(GuestError::MissingScript { path: script });
    }
    // One pipe for both streams keeps the harness's messages in order with the console.
    let mut child = Command::new("bash")
        .arg("-c")
        .arg(r#"exec "$0" "$@" 2>&1"#)
        .arg(&script)
        .args(args)
        .arg("--")
        .arg(guest_script)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|source| GuestError::Spawn {
            path: script.clone(),
            source,
        })?;
    let mut output = String::new();
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).split(b'\n') {
            let line = line.map_err(GuestError::Output)?;
            let line = String::from_utf8_lossy(&line);
            println!("{line}");
            output.push_str(&line);
            output.push('\n');
        }
    }
    let status = child.wait().map_err(GuestError::Wait)?;
    Ok(GuestRun {
        status: status.code(),
        output,
    })
}
