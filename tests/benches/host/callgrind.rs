//! Instructions per request per server thread, counted by valgrind's callgrind over the
//! measured window (`--callgrind`). Unlike CPU time they do not depend on what else the machine
//! runs, so they are the steady check of a change, and of 1 against 2 iothreads on a machine
//! with fewer cores than the bench has threads. Valgrind runs one thread at a time and slows the
//! server some 50 times: the counts say what the code does per request, not how fast it runs
//! (run with `--poll-max-ns 0`, or empty polls are counted too).
//!
//! Requests are counted by callgrind itself, in the same dumps: every command of the bench (a
//! READ or WRITE) makes one call of scsi-disk's `execute`, so the instructions of a window and
//! its requests come from one zero and one dump, whatever the moment each reached the server.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use tempfile::TempDir;

use crate::error::BenchError;

/// Where the dumps of one server go.
pub struct Callgrind {
    dir: TempDir,
}

/// The function every command of the bench calls once (`--dump-instr=no` keeps calls
/// by function).
const PER_REQUEST_FUNCTION: &str = "scsi_disk::commands::execute";

/// Instructions one server thread executed inside the window, and the requests it served there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThreadInstructions {
    pub tid: u32,
    pub instructions: u64,
    pub requests: u64,
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
            threads.push(ThreadInstructions {
                tid,
                instructions,
                requests: count_calls(&text, PER_REQUEST_FUNCTION),
            });
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

/// How many calls of `function` a callgrind profile records, from every caller. Names are
/// compressed: the first `fn=`/`cfn=` line of a function gives its number and name, later ones
/// the number alone; a `calls=COUNT ...` line follows each `cfn=` of a call.
pub fn count_calls(text: &str, function: &str) -> u64 {
    let mut names: HashMap<&str, &str> = HashMap::new();
    let mut callee_matches = false;
    let mut calls = 0;
    for line in text.lines() {
        let (is_callee, spec) = if let Some(spec) = line.strip_prefix("cfn=") {
            (true, spec)
        } else if let Some(spec) = line.strip_prefix("fn=") {
            (false, spec)
        } else {
            if let Some(rest) = line.strip_prefix("calls=") {
                if std::mem::take(&mut callee_matches) {
                    calls += rest
                        .split_whitespace()
                        .next()
                        .and_then(|n| n.parse::<u64>().ok())
                        .unwrap_or(0);
                }
            }
            continue;
        };
        let name = match spec.split_once(") ") {
            Some((id, name)) if id.starts_with('(') => {
                names.insert(id, name);
                name
            }
            _ => match spec.strip_suffix(')') {
                Some(id) => names.get(id).copied().unwrap_or(""),
                None => spec,
            },
        };
        callee_matches = is_callee && names_function(name, function);
    }
    calls
}

/// Whether a profile's function name is `function` (valgrind may keep a Rust symbol's hash).
fn names_function(name: &str, function: &str) -> bool {
    name.strip_prefix(function)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with("::h"))
}
