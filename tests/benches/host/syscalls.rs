//! System calls per server thread over the measured window, counted by the kernel's
//! `raw_syscalls:sys_enter` tracepoint through `perf stat --per-thread -p PID` (Debian
//! `linux-perf`). Tracepoints need no hardware counters, so this works in VMs without a PMU.
//! Without perf, or when it cannot attach, the figures are reported as unavailable, with why.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// The kernel's count of system calls entered by one thread.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThreadSyscalls {
    pub tid: u32,
    pub count: u64,
}

/// What the count gave: per-thread counts over `span`, or why there are none.
#[derive(Clone, Debug, PartialEq)]
pub enum SyscallCounts {
    Counted {
        threads: Vec<ThreadSyscalls>,
        span: Duration,
    },
    Unavailable(String),
}

impl SyscallCounts {
    /// The count of thread `tid`, scaled to `window` (perf counts from its start to its stop,
    /// which bracket the window); zero for a thread that made none.
    pub fn in_window(&self, tid: u32, window: Duration) -> Option<f64> {
        let SyscallCounts::Counted { threads, span } = self else {
            return None;
        };
        let count = threads.iter().find(|t| t.tid == tid).map_or(0, |t| t.count);
        Some(count as f64 * window.as_secs_f64() / span.as_secs_f64().max(1e-9))
    }
}

/// A `perf stat` attached to the server.
pub struct SyscallCounter {
    perf: Child,
    started: Instant,
    /// Holds perf's output file.
    dir: TempDir,
}

impl SyscallCounter {
    /// Attaches to every thread of `pid`; `Err` says why counting is not possible.
    pub fn start(pid: u32) -> Result<SyscallCounter, String> {
        let dir = tempfile::Builder::new()
            .prefix("vus-bench-perf-")
            .tempdir()
            .map_err(|e| format!("no directory for perf's output: {e}"))?;
        let perf = Command::new("perf")
            .args([
                "stat",
                "-e",
                "raw_syscalls:sys_enter",
                "--per-thread",
                "-x,",
            ])
            .arg("-o")
            .arg(output(&dir))
            .args(["-p", &pid.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("perf (Debian linux-perf) cannot run: {e}"))?;
        Ok(SyscallCounter {
            perf,
            started: Instant::now(),
            dir,
        })
    }

    /// Stops perf (SIGINT makes it print its counts) and reads them.
    pub fn stop(mut self) -> SyscallCounts {
        let span = self.started.elapsed();
        let pid = self.perf.id() as libc::pid_t;
        // SAFETY: kill only sends a signal, to the perf child this counter started and still owns
        // (it has not been waited for, so the pid cannot have been reused).
        unsafe { libc::kill(pid, libc::SIGINT) };
        if let Err(e) = self.perf.wait() {
            return SyscallCounts::Unavailable(format!("perf did not stop: {e}"));
        }
        let text = match std::fs::read_to_string(output(&self.dir)) {
            Ok(text) => text,
            Err(e) => return SyscallCounts::Unavailable(format!("perf wrote no counts: {e}")),
        };
        match parse_per_thread(&text) {
            Some(threads) => SyscallCounts::Counted { threads, span },
            None => SyscallCounts::Unavailable(format!(
                "perf could not count raw_syscalls:sys_enter: {}",
                text.lines()
                    .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
                    .collect::<Vec<_>>()
                    .join("; ")
            )),
        }
    }
}

fn output(dir: &TempDir) -> PathBuf {
    dir.path().join("perf-stat.csv")
}

/// The counts in `perf stat --per-thread -x,` output: one `COMM-TID,COUNT,UNIT,EVENT,...` line
/// per thread; a thread that never ran while perf watched reads `<not counted>`, which is zero.
/// None when no line counts the event.
pub fn parse_per_thread(text: &str) -> Option<Vec<ThreadSyscalls>> {
    let mut threads = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let fields: Vec<&str> = line.split(',').collect();
        if fields.len() < 4 || fields[3] != "raw_syscalls:sys_enter" {
            continue;
        }
        let Some(tid) = fields[0]
            .rsplit_once('-')
            .and_then(|(_, tid)| tid.parse().ok())
        else {
            continue;
        };
        let count = match fields[1] {
            "<not counted>" => 0,
            count => count.parse().ok()?,
        };
        threads.push(ThreadSyscalls { tid, count });
    }
    (!threads.is_empty()).then_some(threads)
}
