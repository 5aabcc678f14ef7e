//! One configuration of the matrix: start the server on its disk, bring the device up with the
//! userspace driver, load every request queue from its own thread, and measure the window
//! between warm-up and the end on both sides.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tempfile::NamedTempFile;
use tests::driver::FIRST_REQUEST_QUEUE;
use tests::scsi::encode_lun;
use tests::virtio_pci::VIRTIO_F_INDIRECT_DESC;
use tests::{DriverOptions, DriverQueue, KickMode, ServerProcess, VirtioScsiDriver, WaitMode};

use crate::args::{Args, Config, DiskKind, Kick, Wait};
use crate::callgrind::{Callgrind, ThreadInstructions};
use crate::cpu_time::{
    load_average, sample_machine, sample_process, usage_between, MachineCpu, ThreadCpu,
};
use crate::error::BenchError;
use crate::latency::{Latencies, PassTimes, Summary};
use crate::queue_job::{QueueJob, QueueOutcome, Window, Workload};
use crate::server_counters::ServerCounters;
use crate::syscalls::{SyscallCounter, SyscallCounts};

/// Under callgrind the server starts some 50 times slower.
const SERVER_START_TIMEOUT: Duration = Duration::from_secs(60);
/// Virtio-scsi's max_sectors counts 512-byte units whatever the block size.
const SECTOR: u64 = 512;
/// Guest memory for rings and small buffers, besides the data buffers.
const MEMORY_SLACK: u64 = 16 << 20;
const MIN_MEMORY: u64 = 64 << 20;
/// Bytes of a slot's control block and of alignment around its data, rounded up generously.
const PER_REQUEST_OVERHEAD: u64 = 8192;

/// The measurements of one configuration.
#[derive(Debug)]
pub struct RunResult {
    pub config: Config,
    pub window: Duration,
    pub completed: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub latency: Summary,
    /// Server threads: what each used inside the window.
    pub server_threads: Vec<ThreadCpu>,
    pub server_pid: u32,
    /// From spawning the server to its socket appearing.
    pub startup: Duration,
    /// Server resident memory with the device up and its queues set, before any load.
    pub rss_idle: Resident,
    /// Server resident memory at the end of the loaded window.
    pub rss_loaded: Resident,
    /// CPU time of the driver's queue threads inside the window, summed.
    pub driver_cpu: Duration,
    /// The driver's queue threads' own work inside the window, waits for completions and kicks
    /// apart, summed: what the driver itself costs, which a polling driver's CPU time (a whole
    /// core) does not tell.
    pub driver_busy: Duration,
    /// The median over requests of the driver's work per request in a pass.
    pub driver_pass_median_ns: Option<u32>,
    pub wakeups: u64,
    /// Load averages when the window closed: other work on the machine skews the figures.
    pub load_average: String,
    /// The whole machine's CPU use inside the window.
    pub machine: MachineCpu,
    /// What the server counted over the whole connection, when it logs its counters.
    pub server_counters: Option<ServerCounters>,
    /// What the server counted inside the window (`ctl stats`), when it reports it.
    pub window_counters: Option<ServerCounters>,
    /// System calls per server thread around the window (perf), or why not counted.
    pub syscalls: SyscallCounts,
    /// With `--callgrind`: instructions per server thread inside the window, and the requests
    /// served in that window (callgrind's count of them, from the same zero and dump).
    pub instructions: Option<(Vec<ThreadInstructions>, u64)>,
    /// Which round of `--rounds` this was (0-based).
    pub round: u16,
}

impl RunResult {
    pub fn iops(&self) -> f64 {
        self.completed as f64 / self.window.as_secs_f64()
    }

    pub fn mib_per_second(&self) -> f64 {
        self.iops() * f64::from(self.config.bs) / f64::from(1u32 << 20)
    }

    pub fn per_request(&self, count: u64) -> f64 {
        self.per_request_f(count as f64)
    }

    pub fn per_request_f(&self, count: f64) -> f64 {
        count / self.completed.max(1) as f64
    }

    pub fn server_ns_per_request(&self) -> f64 {
        self.per_request(self.server_threads.iter().map(|t| t.run_ns).sum())
    }

    pub fn driver_ns_per_request(&self) -> f64 {
        self.per_request(self.driver_cpu.as_nanos() as u64)
    }

    pub fn driver_busy_ns_per_request(&self) -> f64 {
        self.per_request(self.driver_busy.as_nanos() as u64)
    }

    /// Share of one core each driver thread was busy.
    pub fn driver_core_share(&self) -> f64 {
        self.driver_cpu.as_secs_f64() / (self.window.as_secs_f64() * f64::from(self.config.queues))
    }

    /// Cores kept busy on average over the window by `ns` of CPU time.
    pub fn cores(&self, ns: u64) -> f64 {
        ns as f64 / self.window.as_nanos().max(1) as f64
    }

    /// Cores busy inside the window: (server, driver queue threads, whole machine).
    pub fn busy_cores(&self) -> (f64, f64, f64) {
        let server = self.server_threads.iter().map(|t| t.run_ns).sum();
        let driver = u64::try_from(self.driver_cpu.as_nanos()).unwrap_or(u64::MAX);
        (
            self.cores(server),
            self.cores(driver),
            self.cores(self.machine.busy_ns),
        )
    }

    pub fn completions_per_wakeup(&self) -> f64 {
        self.completed as f64 / self.wakeups.max(1) as f64
    }

    /// Adds one queue's counts; its latencies and pass times go to `latencies` and `passes`.
    /// Returns the queue.
    fn add(
        &mut self,
        outcome: QueueOutcome,
        latencies: &mut Latencies,
        passes: &mut PassTimes,
    ) -> DriverQueue {
        passes.merge(outcome.passes);
        self.completed += outcome.completed;
        self.errors += outcome.errors;
        self.wakeups += outcome.wakeups;
        self.driver_cpu += outcome.driver_cpu;
        self.driver_busy += outcome.driver_busy;
        if self.first_error.is_none() {
            self.first_error = outcome.first_error;
        }
        latencies.merge(outcome.latencies);
        outcome.queue
    }

    /// How a server thread is named in reports: the main thread is the process itself.
    pub fn thread_label(&self, thread: &ThreadCpu) -> String {
        if thread.tid == self.server_pid {
            format!("main({})", thread.comm)
        } else {
            format!("{}[{}]", thread.comm, thread.tid)
        }
    }
}

/// `file_disk`: the file behind `--disk file`, from [`prepare_file_disk`].
pub fn run_config(
    args: &Args,
    config: Config,
    round: u16,
    warmup: Duration,
    measured: Duration,
    file_disk: &Path,
) -> Result<RunResult, BenchError> {
    let mut server_args = vec![
        "--disk".to_string(),
        disk_argument(args, config.disk, file_disk),
        "--num-queues".to_string(),
        config.queues.to_string(),
        "--queue-size".to_string(),
        args.queue_size.to_string(),
    ];
    for lun in 1..args.luns {
        server_args.push("--disk".to_string());
        server_args.push(format!("null,size={},lun={lun}", args.disk_size));
    }
    for thread in 0..config.iothreads.unwrap_or(0) {
        server_args.push("--iothread".to_string());
        server_args.push(format!("io{thread}"));
    }
    // Its counters over the window come from `ctl stats`.
    let control_dir = tempfile::Builder::new()
        .prefix("vus-bench-ctl-")
        .tempdir()
        .map_err(BenchError::ControlDir)?;
    let control = control_dir.path().join("ctl.sock");
    server_args.push("--control-socket".to_string());
    server_args.push(control.display().to_string());
    // The counters the server logs at disconnect are read from its JSON records.
    if !args.server_args.contains("--log-format") {
        server_args.extend(["--log-format".to_string(), "json".to_string()]);
    }
    server_args.extend(args.server_args.split_whitespace().map(str::to_string));
    let server_args: Vec<&str> = server_args.iter().map(String::as_str).collect();
    let callgrind = args.callgrind.then(Callgrind::new).transpose()?;
    let wrapper = callgrind
        .as_ref()
        .map(Callgrind::wrapper)
        .unwrap_or_default();
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let spawned = Instant::now();
    let mut server = ServerProcess::start_under(&wrapper, &server_args, SERVER_START_TIMEOUT)?;
    let startup = spawned.elapsed();
    let mut driver = VirtioScsiDriver::connect(server.socket(), driver_options(args, config))
        .map_err(|source| BenchError::Connect {
            source,
            stderr: server.stderr(),
        })?;
    if driver.features() & (1 << VIRTIO_F_INDIRECT_DESC) == 0 {
        return Err(BenchError::NoIndirect);
    }
    let workload = prepare_lun(&mut driver, config)?;
    let mut jobs = Vec::new();
    for ordinal in 0..config.queues {
        let mut queue = driver.take_queue(FIRST_REQUEST_QUEUE + ordinal)?;
        let size = queue.ring().size();
        // Each request takes one descriptor: its chain sits in an indirect table.
        if config.depth > size {
            return Err(BenchError::DepthAboveQueueSize {
                depth: config.depth,
                size,
            });
        }
        jobs.push(QueueJob::new(
            queue,
            workload.clone(),
            ordinal,
            config.queues,
        )?);
    }

    let rss_idle = resident(server.pid())?;
    let begin = Instant::now() + warmup;
    let window = Window {
        start: begin,
        end: begin + measured,
    };
    let workers: Vec<_> = jobs
        .into_iter()
        .map(|job| (job.index(), std::thread::spawn(move || job.run(window))))
        .collect();
    // perf attaches during the warm-up; its counts are scaled to the window.
    let syscall_counter = SyscallCounter::start(server.pid());
    std::thread::sleep(window.start.saturating_duration_since(Instant::now()));
    let before = sample_process(server.pid())?;
    let machine_before = sample_machine()?;
    let sampled_from = Instant::now();
    // callgrind_control takes a good part of a second to reach the server: the requests of
    // its window are those callgrind counted between its zero and its dump.
    if let Some(callgrind) = &callgrind {
        callgrind.zero(server.pid())?;
    }
    let stats_start = server_stats(&control)?;
    let stats_probe = server_stats(&control)?;
    std::thread::sleep(window.end.saturating_duration_since(Instant::now()));
    let after = sample_process(server.pid())?;
    let machine = sample_machine()?.since(&machine_before);
    let sampled_for = sampled_from.elapsed();
    let instructions = match &callgrind {
        Some(callgrind) => {
            let tids: Vec<u32> = after.iter().map(|t| t.tid).collect();
            let threads = callgrind.dump(server.pid(), &tids)?;
            let requests = threads.iter().map(|t| t.requests).sum();
            Some((threads, requests))
        }
        None => None,
    };
    let syscalls = match syscall_counter {
        Ok(counter) => counter.stop(),
        Err(why) => SyscallCounts::Unavailable(why),
    };
    let stats_end = server_stats(&control)?;
    let rss_loaded = resident(server.pid())?;

    let mut result = RunResult {
        config,
        window: measured,
        completed: 0,
        errors: 0,
        first_error: None,
        latency: Summary::default(),
        server_threads: usage_between(&before, &after),
        server_pid: server.pid(),
        startup,
        rss_idle,
        rss_loaded,
        driver_cpu: Duration::ZERO,
        driver_busy: Duration::ZERO,
        driver_pass_median_ns: None,
        wakeups: 0,
        load_average: load_average(),
        machine,
        server_counters: None,
        window_counters: Some(ServerCounters::window(
            &stats_start,
            &stats_probe,
            &stats_end,
        )),
        syscalls,
        instructions,
        round,
    };
    // Server CPU is scaled to the window the requests were counted in, in case the samples
    // were taken late.
    let scale = measured.as_secs_f64() / sampled_for.as_secs_f64().max(1e-9);
    result.machine.busy_ns = (result.machine.busy_ns as f64 * scale) as u64;
    result.machine.steal_ns = (result.machine.steal_ns as f64 * scale) as u64;
    for thread in &mut result.server_threads {
        thread.run_ns = (thread.run_ns as f64 * scale) as u64;
        thread.user_ns = (thread.user_ns as f64 * scale) as u64;
        thread.system_ns = (thread.system_ns as f64 * scale) as u64;
    }
    let mut latencies = Latencies::default();
    let mut passes = PassTimes::default();
    for (index, worker) in workers {
        let outcome = match worker.join() {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(e)) if !server.is_running() => {
                return Err(BenchError::ServerExited {
                    cause: Box::new(e),
                    stderr: server.stderr(),
                })
            }
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(BenchError::WorkerPanicked(index)),
        };
        driver.return_queue(result.add(outcome, &mut latencies, &mut passes));
    }
    result.latency = latencies.summary();
    result.driver_pass_median_ns = passes.median_ns_per_request();
    drop(driver);
    server.terminate(Duration::from_secs(5))?;
    result.server_counters = ServerCounters::parse(&server.stderr());
    Ok(result)
}

/// The server's totals now, from `ctl stats` on its control socket.
fn server_stats(control: &Path) -> Result<ServerCounters, BenchError> {
    let (_, reply) = tests::server_process::ctl(control, &["stats"])?;
    ServerCounters::from_stats(&reply).ok_or_else(|| BenchError::Stats {
        path: control.to_path_buf(),
        reply,
    })
}

fn driver_options(args: &Args, config: Config) -> DriverOptions {
    let per_request = u64::from(config.bs) + PER_REQUEST_OVERHEAD;
    let data = u64::from(config.queues) * u64::from(config.depth) * per_request;
    DriverOptions {
        mem_size: (data + MEMORY_SLACK)
            .max(MIN_MEMORY)
            .next_multiple_of(2 << 20),
        queue_size: Some(args.queue_size),
        kick: match config.kick {
            Kick::Socket => KickMode::PostedWrite,
            Kick::Iofd => KickMode::IoEventFd,
        },
        wait: match args.wait {
            Wait::Interrupt => WaitMode::Interrupt,
            Wait::Poll => WaitMode::Poll,
        },
        ..DriverOptions::default()
    }
}

/// The `--disk` argument of LUN 0.
fn disk_argument(args: &Args, kind: DiskKind, file_disk: &Path) -> String {
    match kind {
        DiskKind::Null if args.null_latency_us > 0 => format!(
            "null,size={},latency-us={}",
            args.disk_size, args.null_latency_us
        ),
        DiskKind::Null => format!("null,size={}", args.disk_size),
        DiskKind::File => {
            let mut spec = format!("path={}", escape_commas(file_disk));
            if !args.disk_options.is_empty() {
                spec.push(',');
                spec.push_str(&args.disk_options);
            }
            spec
        }
    }
}

/// The file the file-disk runs use: `--file`, or a temporary file (removed when dropped)
/// written in full, so that every block is allocated and reads reach the storage. `None` when
/// no run uses a file disk.
pub fn prepare_file_disk(
    args: &Args,
    configs: &[Config],
) -> Result<Option<(PathBuf, Option<NamedTempFile>)>, BenchError> {
    if !configs.iter().any(|c| c.disk == DiskKind::File) {
        return Ok(None);
    }
    if let Some(path) = &args.file {
        return Ok(Some((path.clone(), None)));
    }
    let failed = |source| BenchError::DiskFile {
        dir: args.file_dir.clone(),
        source,
    };
    let mut file = tempfile::Builder::new()
        .prefix("vus-bench-")
        .suffix(".img")
        .tempfile_in(&args.file_dir)
        .map_err(failed)?;
    eprintln!(
        "bench-host: writing the {} MiB file disk in full ({})",
        args.disk_size >> 20,
        file.path().display()
    );
    let chunk: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8 + 1).collect();
    let mut left = args.disk_size;
    while left > 0 {
        let len = left.min(chunk.len() as u64) as usize;
        file.write_all(&chunk[..len]).map_err(failed)?;
        left -= len as u64;
    }
    file.as_file().sync_all().map_err(failed)?;
    Ok(Some((file.path().to_path_buf(), Some(file))))
}

/// Resident memory of a process, in KiB.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Resident {
    /// VmRSS: everything, including the pages of guest memory the server has touched (shared
    /// with the driver, as guest RAM is shared with QEMU).
    pub total_kib: u64,
    /// RssAnon: the server's own private memory.
    pub anon_kib: u64,
}

fn resident(pid: u32) -> Result<Resident, BenchError> {
    let path = PathBuf::from(format!("/proc/{pid}/status"));
    let status = std::fs::read_to_string(&path).map_err(|source| BenchError::Proc {
        path: path.clone(),
        source,
    })?;
    parse_resident(&status).ok_or(BenchError::ProcFormat {
        path,
        what: "no VmRSS or RssAnon line",
    })
}

pub fn parse_resident(status: &str) -> Option<Resident> {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
    };
    Some(Resident {
        total_kib: field("VmRSS:")?,
        anon_kib: field("RssAnon:")?,
    })
}

/// `--disk` takes `,,` for a literal comma.
fn escape_commas(path: &std::path::Path) -> String {
    path.display().to_string().replace(',', ",,")
}

/// Clears LUN 0's power-on unit attention on the control path and sizes the workload to it.
fn prepare_lun(driver: &mut VirtioScsiDriver, config: Config) -> Result<Workload, BenchError> {
    let mut last = None;
    for _ in 0..4 {
        let result = driver.test_unit_ready(0)?;
        if result.is_good() {
            last = None;
            break;
        }
        last = Some(result);
    }
    if let Some(result) = last {
        return Err(BenchError::NotReady {
            status: result.status,
            sense: result.sense_key(),
        });
    }
    let (blocks, block_size) = driver.capacity(0)?.ok_or(BenchError::Capacity)?;
    let bs = u64::from(config.bs);
    if block_size == 0 || bs % u64::from(block_size) != 0 {
        return Err(BenchError::BsNotBlocks { bs, block_size });
    }
    let max_transfer = u64::from(driver.config().max_sectors) * SECTOR;
    if bs > max_transfer {
        return Err(BenchError::BsAboveMaxTransfer { bs, max_transfer });
    }
    let slots = blocks.saturating_mul(u64::from(block_size)) / bs;
    if slots == 0 {
        return Err(BenchError::BsAboveDisk {
            bs,
            blocks,
            block_size,
        });
    }
    let lun = encode_lun(0, 0)?;
    let device = driver.config();
    Ok(Workload {
        lun,
        cdb_size: device.cdb_size,
        sense_size: device.sense_size,
        pattern: config.rw,
        bs: config.bs,
        block_size,
        slots,
        depth: config.depth,
    })
}

/// Where the temporary file disk goes, for the report header.
pub fn file_disk_location(args: &Args) -> PathBuf {
    args.file.clone().unwrap_or_else(|| args.file_dir.clone())
}
