//! CPU time of the server's threads, read from /proc, and of the benchmark's own threads.
//!
//! `schedstat` gives on-CPU nanoseconds exactly; `stat` splits the time into user and system in
//! clock ticks (coarse, but it shows how much of a request is spent in syscalls); `status`
//! counts context switches, which are the thread's wake-ups when it sleeps between events.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::BenchError;

/// CPU figures of one thread: cumulative counters, or their growth over an interval.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ThreadCpu {
    pub tid: u32,
    pub comm: String,
    pub run_ns: u64,
    pub user_ns: u64,
    pub system_ns: u64,
    pub voluntary_switches: u64,
    pub involuntary_switches: u64,
}

/// The counters of every thread of process `pid` now. Threads that exit while being read are
/// left out.
pub fn sample_process(pid: u32) -> Result<Vec<ThreadCpu>, BenchError> {
    let task_dir = PathBuf::from(format!("/proc/{pid}/task"));
    let entries = fs::read_dir(&task_dir).map_err(|source| BenchError::Proc {
        path: task_dir.clone(),
        source,
    })?;
    let tick_ns = 1_000_000_000 / ticks_per_second();
    let mut threads = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| BenchError::Proc {
            path: task_dir.clone(),
            source,
        })?;
        let Some(tid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        if let Some(thread) = sample_thread(&entry.path(), tid, tick_ns)? {
            threads.push(thread);
        }
    }
    threads.sort_by_key(|t| t.tid);
    Ok(threads)
}

fn sample_thread(dir: &Path, tid: u32, tick_ns: u64) -> Result<Option<ThreadCpu>, BenchError> {
    let Some(stat) = read_if_present(&dir.join("stat"))? else {
        return Ok(None);
    };
    let (comm, utime, stime) = parse_stat(&stat).ok_or_else(|| BenchError::ProcFormat {
        path: dir.join("stat"),
        what: "no comm, utime and stime",
    })?;
    let Some(status) = read_if_present(&dir.join("status"))? else {
        return Ok(None);
    };
    let (voluntary_switches, involuntary_switches) =
        parse_switches(&status).ok_or_else(|| BenchError::ProcFormat {
            path: dir.join("status"),
            what: "no context switch counts",
        })?;
    let (user_ns, system_ns) = (utime * tick_ns, stime * tick_ns);
    // Kernels without schedstats only have the tick counts.
    let run_ns = read_if_present(&dir.join("schedstat"))?
        .and_then(|s| parse_schedstat(&s))
        .unwrap_or(user_ns + system_ns);
    Ok(Some(ThreadCpu {
        tid,
        comm,
        run_ns,
        user_ns,
        system_ns,
        voluntary_switches,
        involuntary_switches,
    }))
}

fn read_if_present(path: &Path) -> Result<Option<String>, BenchError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        // The thread exited between listing and reading.
        Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH) => {
            Ok(None)
        }
        Err(source) => Err(BenchError::Proc {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// What each thread used between two samples; threads born in between count from zero.
pub fn usage_between(before: &[ThreadCpu], after: &[ThreadCpu]) -> Vec<ThreadCpu> {
    after
        .iter()
        .map(|now| {
            let zero = ThreadCpu::default();
            let then = before.iter().find(|t| t.tid == now.tid).unwrap_or(&zero);
            ThreadCpu {
                tid: now.tid,
                comm: now.comm.clone(),
                run_ns: now.run_ns.saturating_sub(then.run_ns),
                user_ns: now.user_ns.saturating_sub(then.user_ns),
                system_ns: now.system_ns.saturating_sub(then.system_ns),
                voluntary_switches: now
                    .voluntary_switches
                    .saturating_sub(then.voluntary_switches),
                involuntary_switches: now
                    .involuntary_switches
                    .saturating_sub(then.involuntary_switches),
            }
        })
        .collect()
}

/// (comm, utime, stime) of a `stat` line. comm sits in parentheses and may itself contain
/// spaces and parentheses, so the fields are counted from the last `)`.
pub fn parse_stat(text: &str) -> Option<(String, u64, u64)> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_string();
    let mut fields = text.get(close + 1..)?.split_whitespace();
    // After comm: state is field 3 of proc(5); utime and stime are fields 14 and 15.
    let utime = fields.nth(11)?.parse().ok()?;
    let stime = fields.next()?.parse().ok()?;
    Some((comm, utime, stime))
}

/// On-CPU nanoseconds, the first field of `schedstat`.
pub fn parse_schedstat(text: &str) -> Option<u64> {
    text.split_whitespace().next()?.parse().ok()
}

/// (voluntary, involuntary) context switches from `status`.
pub fn parse_switches(text: &str) -> Option<(u64, u64)> {
    let field = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().parse().ok())
    };
    Some((
        field("voluntary_ctxt_switches:")?,
        field("nonvoluntary_ctxt_switches:")?,
    ))
}

/// The whole machine's CPU time, every process and the kernel's own work, from the `cpu` line
/// of /proc/stat (clock ticks, as nanoseconds): over the window it tells whether the server and
/// the driver had the cores to themselves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MachineCpu {
    /// user + nice + system + irq + softirq (guest time is inside user).
    pub busy_ns: u64,
    /// Time the hypervisor ran something else while this machine's vCPUs wanted to run.
    pub steal_ns: u64,
}

impl MachineCpu {
    pub fn since(&self, earlier: &MachineCpu) -> MachineCpu {
        MachineCpu {
            busy_ns: self.busy_ns.saturating_sub(earlier.busy_ns),
            steal_ns: self.steal_ns.saturating_sub(earlier.steal_ns),
        }
    }
}

pub fn sample_machine() -> Result<MachineCpu, BenchError> {
    let path = PathBuf::from("/proc/stat");
    let text = fs::read_to_string(&path).map_err(|source| BenchError::Proc {
        path: path.clone(),
        source,
    })?;
    parse_proc_stat(&text, 1_000_000_000 / ticks_per_second()).ok_or(BenchError::ProcFormat {
        path,
        what: "no aggregate cpu line",
    })
}

/// The aggregate `cpu` line: user nice system idle iowait irq softirq steal ...
pub fn parse_proc_stat(text: &str, tick_ns: u64) -> Option<MachineCpu> {
    let line = text.lines().find(|line| line.starts_with("cpu "))?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    let field = |index: usize| ticks.get(index).copied();
    let busy = field(0)? + field(1)? + field(2)? + field(5)? + field(6)?;
    Some(MachineCpu {
        busy_ns: busy * tick_ns,
        steal_ns: field(7).unwrap_or(0) * tick_ns,
    })
}

/// The 1, 5 and 15 minute load averages, to tell a reader how busy the machine was.
pub fn load_average() -> String {
    let text = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn ticks_per_second() -> u64 {
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    // Linux has reported 100 everywhere for decades; a failed call falls back to it.
    u64::try_from(ticks).ok().filter(|&t| t > 0).unwrap_or(100)
}

/// CPU time the calling thread has used so far.
pub fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own; this clock always exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}
