//! The results as a table for people and as JSON for tools.

use std::path::Path;

use serde_json::{json, Value};

use crate::args::{name, Config};
use crate::error::BenchError;
use crate::run::RunResult;
use crate::syscalls::SyscallCounts;

const HEADER: &str = "disk  kick    q  depth  rw         bs       IOPS    MiB/s   p50 us   p99 us  p99.9 us  srv ns/req  drv ns/req  errors  iothreads";

pub fn print_header() {
    println!("{HEADER}");
}

/// One table row, printed as soon as the configuration finishes.
pub fn print_row(r: &RunResult) {
    let c = &r.config;
    println!(
        "{:<5} {:<7} {:>2} {:>6}  {:<9} {:>6} {:>10.0} {:>8.1} {:>8.1} {:>8.1} {:>9.1} {:>11.0} {:>11.0} {:>7}  {:>9}",
        name(c.disk),
        name(c.kick),
        c.queues,
        c.depth,
        name(c.rw),
        c.bs,
        r.iops(),
        r.mib_per_second(),
        r.latency.p50_us,
        r.latency.p99_us,
        r.latency.p999_us,
        r.server_ns_per_request(),
        r.driver_ns_per_request(),
        r.errors,
        c.iothreads.map_or("-".to_string(), |n| n.to_string()),
    );
}

/// A configuration in a few words, for progress lines.
pub fn describe(c: &Config) -> String {
    let threads = c
        .iothreads
        .map_or(String::new(), |n| format!(" {n} iothreads"));
    format!(
        "{} disk, {} kicks, {} queues{threads}, depth {}, {} {}",
        name(c.disk),
        name(c.kick),
        c.queues,
        c.depth,
        name(c.rw),
        c.bs
    )
}

/// Per-thread server figures and the driver's own load, under the table.
pub fn print_details(results: &[RunResult]) {
    println!();
    println!(
        "server threads, per request: on-CPU ns (user + system ns), context switches \
         (voluntary: sleeps; involuntary: preemptions), system calls (perf, raw_syscalls:sys_enter); \
         with --callgrind, instructions over the requests callgrind saw served in the same window \
         (its count of scsi-disk's execute calls)"
    );
    println!(
        "iothreads, per request: busy ns from the iothread's own clock (ctl stats busy_ns: serving \
         queues, its empty polls and sleep left out), then empty polls and sleep. With polling on, \
         the <300 ns aim is judged by busy ns: on-CPU time also counts the polls that wait for a \
         driver slower than the server, so it measures the driver's pace, not the server's cost"
    );
    println!(
        "driver: its work per request (median pass, and average), CPU time per request, share of a core per queue thread, completions per wake-up"
    );
    println!(
        "cores: how many cores the server, the driver's queue threads and the whole machine (every \
         process, /proc/stat) kept busy on average over the window, of the machine's {}, and the \
         time the hypervisor stole: with all cores busy the threads wait for one another, and \
         their CPU per request grows with the preemptions",
        cpus()
    );
    for r in results {
        let c = &r.config;
        println!(
            "{}{} {} q{}{} d{} {} (load average {}): started in {:.1} ms, RSS {} KiB idle ({} KiB own), {} KiB loaded ({} KiB own)",
            if r.round > 0 { format!("round {} ", r.round + 1) } else { String::new() },
            name(c.disk),
            name(c.kick),
            c.queues,
            c.iothreads.map_or(String::new(), |n| format!(" it{n}")),
            c.depth,
            name(c.rw),
            r.load_average,
            r.startup.as_secs_f64() * 1e3,
            r.rss_idle.total_kib,
            r.rss_idle.anon_kib,
            r.rss_loaded.total_kib,
            r.rss_loaded.anon_kib,
        );
        for thread in r.server_threads.iter().filter(|t| t.run_ns > 0) {
            let syscalls = r
                .syscalls
                .in_window(thread.tid, r.window)
                .map_or("n/a".to_string(), |n| format!("{:.4}", r.per_request_f(n)));
            let instructions = r
                .instructions
                .as_ref()
                .and_then(|(threads, requests)| {
                    let t = threads.iter().find(|t| t.tid == thread.tid)?;
                    Some(format!(
                        ", {:.0} instructions",
                        t.instructions as f64 / (*requests).max(1) as f64
                    ))
                })
                .unwrap_or_default();
            println!(
                "  {:<28} {:>8.0} ns ({:>6.0} + {:>6.0})  {:>6.3} vol {:>6.3} invol  {syscalls} syscalls{}{instructions}",
                r.thread_label(thread),
                r.per_request(thread.run_ns),
                r.per_request(thread.user_ns),
                r.per_request(thread.system_ns),
                r.per_request(thread.voluntary_switches),
                r.per_request(thread.involuntary_switches),
                iothread_time(r, &thread.comm),
            );
        }
        if let SyscallCounts::Unavailable(why) = &r.syscalls {
            println!("  system calls per thread: not counted ({why})");
        }
        if let Some(check) = polling_check(r) {
            println!("  {check}");
        }
        if let Some(counters) = &r.server_counters {
            let allocations = counters.allocations_per_request().map_or(
                "n/a (server built without count-allocations)".to_string(),
                |a| format!("{a:.4}"),
            );
            println!(
                "  server counters (whole connection): {}, {} allocations per request",
                counters.signalling(),
                allocations,
            );
        }
        if let Some(counters) = &r.window_counters {
            println!(
                "  server counters (measured window, steady state): {}, {} allocations per request",
                counters.signalling(),
                counters
                    .allocations_per_request()
                    .map_or("n/a".to_string(), |a| format!("{a:.4}")),
            );
        }
        println!(
            "  driver: {} ns/request work in the median pass ({:.0} on average, preemption included; waits for completions and kicks left out), {:.0} ns/request CPU, {:.0}% of a core per queue thread, {:.1} completions per wake-up",
            r.driver_pass_median_ns.map_or("n/a".to_string(), |ns| ns.to_string()),
            r.driver_busy_ns_per_request(),
            r.driver_ns_per_request(),
            r.driver_core_share() * 100.0,
            r.completions_per_wakeup(),
        );
        println!("  cores: {}", cores(r));
    }
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(0, |n| n.get())
}

/// The cores busy over `r`'s window, and who kept them busy.
fn cores(r: &RunResult) -> String {
    let (server, driver, machine) = r.busy_cores();
    format!(
        "server {server:.2} + driver {driver:.2} = {:.2} of {}; whole machine {machine:.2} \
         (other processes {:.2}), stolen {:.2}",
        server + driver,
        cpus(),
        (machine - server - driver).max(0.0),
        r.cores(r.machine.steal_ns),
    )
}

/// For a run whose iothreads polled: the polling aim's two figures side by side, busy ns per
/// request (under 300) and system calls per request (none per request) on the iothreads.
fn polling_check(r: &RunResult) -> Option<String> {
    let counters = r.window_counters.as_ref()?;
    if counters.iothreads.iter().all(|t| t.poll_ns == 0) {
        return None;
    }
    let busy: u64 = counters.iothreads.iter().map(|t| t.busy_ns).sum();
    let iothreads: Vec<u32> = r
        .server_threads
        .iter()
        .filter(|t| {
            counters
                .iothreads
                .iter()
                .any(|i| i.name.starts_with(t.comm.as_str()))
        })
        .map(|t| t.tid)
        .collect();
    let syscalls = iothreads
        .iter()
        .map(|&tid| r.syscalls.in_window(tid, r.window))
        .sum::<Option<f64>>()
        .map_or("system calls not counted".to_string(), |n| {
            format!("{:.4} system calls per request on them", r.per_request_f(n))
        });
    Some(format!(
        "polling check: iothreads busy {:.0} ns per request (aim: under 300), {syscalls} (aim: none per request)",
        counters.per_request(busy)
    ))
}

/// ", busy N ns (empty polls P, asleep S)" per request for the iothread named `comm`, from the
/// window's `ctl stats`; empty when the thread is not an iothread.
fn iothread_time(r: &RunResult, comm: &str) -> String {
    let Some(counters) = &r.window_counters else {
        return String::new();
    };
    counters
        .iothreads
        .iter()
        .find(|t| t.name.get(..comm.len().min(t.name.len())) == Some(comm))
        .map_or(String::new(), |t| {
            format!(
                ", busy {:.0} ns (empty polls {:.0}, asleep {:.0})",
                counters.per_request(t.busy_ns),
                counters.per_request(t.poll_ns),
                counters.per_request(t.sleep_ns),
            )
        })
}

/// Server CPU per request with 2 iothreads against 1, for every configuration run with both:
/// the scaling figure (at most 1.05). Each round's pair is printed, then the median of
/// the rounds' ratios; with `--callgrind`, the same for instructions per request, which do not
/// depend on the machine's load.
pub fn print_scaling(results: &[RunResult]) {
    let pairs: Vec<(&RunResult, &RunResult)> = results
        .iter()
        .filter(|two| two.config.iothreads == Some(2))
        .filter_map(|two| {
            let one = Config {
                iothreads: Some(1),
                ..two.config
            };
            results
                .iter()
                .find(|r| r.config == one && r.round == two.round)
                .map(|one| (one, two))
        })
        .collect();
    if pairs.is_empty() {
        return;
    }
    println!();
    println!(
        "iothreads, 2 vs 1: server CPU ns per request (all threads; per iothread), then \
         instructions per request (all threads) with --callgrind"
    );
    let mut described: Vec<Config> = Vec::new();
    for (one, _) in &pairs {
        let c = Config {
            iothreads: None,
            ..one.config
        };
        if described.contains(&c) {
            continue;
        }
        described.push(c);
        println!("{}:", describe(&c));
        let rounds: Vec<&(&RunResult, &RunResult)> = pairs
            .iter()
            .filter(|(one, _)| {
                Config {
                    iothreads: None,
                    ..one.config
                } == c
            })
            .collect();
        let mut cpu_ratios = Vec::new();
        let mut instruction_ratios = Vec::new();
        for (one, two) in &rounds {
            let cpu_ratio = two.server_ns_per_request() / one.server_ns_per_request().max(1.0);
            cpu_ratios.push(cpu_ratio);
            let instructions = match (instructions_per_request(one), instructions_per_request(two))
            {
                (Some(a), Some(b)) => {
                    instruction_ratios.push(b / a.max(1.0));
                    format!(
                        "; {a:.0} vs {b:.0} instructions, ratio {:.3}",
                        b / a.max(1.0)
                    )
                }
                _ => String::new(),
            };
            println!(
                "  round {}: 1 iothread {:.0} ns ({}), 2 iothreads {:.0} ns ({}): ratio {:.2}{instructions}",
                one.round + 1,
                one.server_ns_per_request(),
                per_iothread(one),
                two.server_ns_per_request(),
                per_iothread(two),
                cpu_ratio,
            );
            println!(
                "    cores, 1 iothread: {}; 2 iothreads: {}",
                cores(one),
                cores(two)
            );
        }
        let instructions = median(&mut instruction_ratios)
            .map_or(String::new(), |m| format!(", instructions {m:.3}"));
        if let Some(cpu) = median(&mut cpu_ratios) {
            println!(
                "  median 2 vs 1 ratio over {} rounds: CPU {cpu:.2}{instructions}",
                rounds.len()
            );
        }
    }
}

/// Server instructions per request, all threads, from `--callgrind`.
fn instructions_per_request(r: &RunResult) -> Option<f64> {
    let (threads, requests) = r.instructions.as_ref()?;
    let total: u64 = threads.iter().map(|t| t.instructions).sum();
    Some(total as f64 / (*requests).max(1) as f64)
}

fn median(values: &mut [f64]) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    match values.len() {
        0 => None,
        n if n % 2 == 1 => Some(values[middle]),
        _ => Some((values[middle - 1] + values[middle]) / 2.0),
    }
}

/// The busy threads other than the main loop, with their CPU per request.
fn per_iothread(r: &RunResult) -> String {
    r.server_threads
        .iter()
        .filter(|t| t.run_ns > 0 && t.tid != r.server_pid)
        .map(|t| format!("{} {:.0}", t.comm, r.per_request(t.run_ns)))
        .collect::<Vec<_>>()
        .join(" + ")
}

pub fn write_json(path: &Path, header: Value, results: &[RunResult]) -> Result<(), BenchError> {
    let runs: Vec<Value> = results.iter().map(run_json).collect();
    let document = json!({ "host": header, "runs": runs });
    let text = serde_json::to_string_pretty(&document).map_err(|e| BenchError::Json {
        path: path.to_path_buf(),
        source: e.into(),
    })?;
    std::fs::write(path, text + "\n").map_err(|source| BenchError::Json {
        path: path.to_path_buf(),
        source,
    })
}

fn run_json(r: &RunResult) -> Value {
    let c = &r.config;
    let threads: Vec<Value> = r
        .server_threads
        .iter()
        .map(|t| {
            json!({
                "tid": t.tid,
                "comm": t.comm,
                "main": t.tid == r.server_pid,
                "cpu_ns_per_request": r.per_request(t.run_ns),
                "user_ns_per_request": r.per_request(t.user_ns),
                "system_ns_per_request": r.per_request(t.system_ns),
                "voluntary_switches_per_request": r.per_request(t.voluntary_switches),
                "involuntary_switches_per_request": r.per_request(t.involuntary_switches),
                "syscalls_per_request": r.syscalls.in_window(t.tid, r.window).map(|n| r.per_request_f(n)),
                "instructions_per_request": r.instructions.as_ref().and_then(|(threads, requests)| {
                    threads.iter().find(|i| i.tid == t.tid).map(|i| i.instructions as f64 / (*requests).max(1) as f64)
                }),
            })
        })
        .collect();
    json!({
        "disk": name(c.disk),
        "kick": name(c.kick),
        "queues": c.queues,
        "iothreads": c.iothreads,
        "depth": c.depth,
        "rw": name(c.rw),
        "bs": c.bs,
        "round": r.round,
        "seconds": r.window.as_secs_f64(),
        "completed": r.completed,
        "errors": r.errors,
        "load_average": r.load_average,
        "busy_cores": {
            "server": r.busy_cores().0,
            "driver": r.busy_cores().1,
            "machine": r.busy_cores().2,
            "stolen": r.cores(r.machine.steal_ns),
        },
        "first_error": r.first_error,
        "iops": r.iops(),
        "mib_per_second": r.mib_per_second(),
        "latency_us": {
            "p50": r.latency.p50_us,
            "p99": r.latency.p99_us,
            "p99_9": r.latency.p999_us,
            "mean": r.latency.mean_us,
            "max": r.latency.max_us,
        },
        "server": {
            "startup_ms": r.startup.as_secs_f64() * 1e3,
            "rss_idle_kib": r.rss_idle.total_kib,
            "rss_loaded_kib": r.rss_loaded.total_kib,
            "rss_anon_idle_kib": r.rss_idle.anon_kib,
            "rss_anon_loaded_kib": r.rss_loaded.anon_kib,
            "cpu_ns_per_request": r.server_ns_per_request(),
            "instructions_per_request": instructions_per_request(r),
            "threads": threads,
            "kicks_per_request": r.server_counters.as_ref().map(|c| c.kicks_per_request()),
            "interrupts_per_request": r.server_counters.as_ref().map(|c| c.interrupts_per_request()),
            "interrupts_deferred_per_request": r.server_counters.as_ref().map(|c| c.per_request(c.interrupts_deferred)),
            "rechecks_per_request": r.server_counters.as_ref().map(|c| c.per_request(c.rechecks)),
            "allocations_per_request": r.server_counters.as_ref().and_then(|c| c.allocations_per_request()),
            "window": r.window_counters.as_ref().map(|c| json!({
                "kicks_per_request": c.kicks_per_request(),
                "interrupts_per_request": c.interrupts_per_request(),
                "interrupts_deferred_per_request": c.per_request(c.interrupts_deferred),
                "rechecks_per_request": c.per_request(c.rechecks),
                "allocations_per_request": c.allocations_per_request(),
                "iothreads": c.iothreads.iter().map(|t| json!({
                    "name": t.name,
                    "busy_ns_per_request": c.per_request(t.busy_ns),
                    "empty_poll_ns_per_request": c.per_request(t.poll_ns),
                    "sleep_ns_per_request": c.per_request(t.sleep_ns),
                })).collect::<Vec<_>>(),
            })),
        },
        "driver": {
            "cpu_ns_per_request": r.driver_ns_per_request(),
            "busy_ns_per_request": r.driver_busy_ns_per_request(),
            "median_pass_ns_per_request": r.driver_pass_median_ns,
            "core_share_per_queue_thread": r.driver_core_share(),
            "completions_per_wakeup": r.completions_per_wakeup(),
        },
    })
}
