//! Instructions per request per server thread, counted by valgrind's callgrind over the
//! measured window (`--callgrind`). Unlike CPU time they do not depend on what else the machine
//! runs, so they are the steady check of a change, and of 1 against 2 iothreads on a machine
//! with fewer cores than the bench has threads. Valgrind runs one thread at a time and slows the
//! server some 50 times: the counts say what the code does per request, not how fast it runs
//! (run with `--poll-max-ns 0`, or empty polls are counted too).

use std::path::PathBuf;
use std::process::{Command, Stdio};

use tempfile::TempDir;

use crate::error::BenchError;

/// Where the dumps of one server go.
pub struct Callgrind {
    dir: TempDir,
}

/// Instructions one server thread executed inside the window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThreadInstructions {
    pub tid: u32,
    pub instructions: u64,
}

impl Callgrind {
    pub fn new() -> Result<Callgrind, BenchError> {
        let dir = tempfile::Builder::new()
            .prefix("vus-bench-callgrind-")
            .tempdir()
            .map_err(BenchError::CallgrindDir)?;
        Ok(Callgrind { dir })
    }

    /// The command the server runs under: one profile file per thread, counted from the start
    /// (zeroed when the window opens).
    pub fn wrapper(&self) -> Vec<String> {
        vec![
            "valgrind".to_string(),
            "--tool=callgrind".to_string(),
            "--separate-threads=yes".to_string(),
            "--dump-instr=no".to_string(),
            "--dump-line=no".to_string(),
            format!("--callgrind-out-file={}", self.out_file().display()),
        ]
    }

    fn out_file(&self) -> PathBuf {
        self.dir.path().join("server.cg")
    }

    /// Zeroes every thread's counts (the window opens).
    pub fn zero(&self, pid: u32) -> Result<(), BenchError> {
        control(pid, "--zero")
    }

    /// Dumps every thread's counts since the zero (the window closes) and reads them. Valgrind
    /// numbers threads in the order they were created: `tids` are the server's threads, by
    /// creation (tid) order.
    pub fn dump(&self, pid: u32, tids: &[u32]) -> Result<Vec<ThreadInstructions>, BenchError> {
        control(pid, "--dump")?;
        let prefix = format!("{}.1-", self.out_file().display());
        let mut threads = Vec::new();
        for (index, &tid) in tids.iter().enumerate() {
            let path = PathBuf::from(format!("{prefix}{:02}", index + 1));
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            let instructions = parse_totals(&text).ok_or(BenchError::CallgrindDump { path })?;
            threads.push(ThreadInstructions { tid, instructions });
        }
        if threads.is_empty() {
            return Err(BenchError::CallgrindDump {
                path: PathBuf::from(format!("{prefix}01")),
            });
        }
        Ok(threads)
    }
}

/// Runs `callgrind_control OPTION PID`, which reaches the server through valgrind's gdbserver.
fn control(pid: u32, option: &'static str) -> Result<(), BenchError> {
    let output = Command::new("callgrind_control")
        .arg(option)
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .output()
        .map_err(BenchError::CallgrindControlSpawn)?;
    if !output.status.success() {
        return Err(BenchError::CallgrindControl {
            option,
            pid,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// The `totals:` line of a callgrind profile (instructions, the only event collected).
pub fn parse_totals(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix("totals:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}
