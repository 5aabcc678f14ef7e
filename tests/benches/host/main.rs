//! Host-side benchmark of the vfio-user-scsi server, without a guest: the userspace virtio-scsi
//! driver of the `tests` crate drives N request queues at a fixed depth against null and file
//! disks, with socket and ioeventfd kicks, and reports IOPS, latency percentiles, and the CPU
//! time the server's threads (and the driver's) spend per request.
//!
//! `cargo build --release -p server` then
//! `VUS_SERVER_BIN=target/release/vfio-user-scsi cargo bench -p tests --bench host -- --help`
//! (or `scripts/bench-host.sh`). Under `cargo test --benches`, where cargo does not pass
//! `--bench`, it only runs its self-checks.

// The results record is one `json!` literal, deeper than the default macro recursion limit.
#![recursion_limit = "256"]

mod args;
mod callgrind;
mod cpu_time;
mod error;
mod latency;
mod queue_job;
mod report;
mod run;
mod self_check;
mod server_counters;
mod syscalls;

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use serde_json::{json, Value};

use crate::args::{Args, Config};
use crate::error::BenchError;
use crate::run::{file_disk_location, prepare_file_disk, run_config, RunResult};

fn main() -> ExitCode {
    let args = Args::parse();
    if !args.bench {
        self_check::run();
        println!("bench-host: self-checks passed; `cargo bench -p tests --bench host` benchmarks");
        return ExitCode::SUCCESS;
    }
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-host: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), BenchError> {
    let configs = args.configurations()?;
    let warmup = args.warmup()?;
    let measured = args.measured()?;
    let header = host_header(args)?;
    for (key, value) in header.as_object().into_iter().flatten() {
        println!("{key}: {value}");
    }
    println!();
    let file_disk = prepare_file_disk(args, &configs)?;
    let file_path = file_disk
        .as_ref()
        .map(|(path, _)| path.clone())
        .unwrap_or_default();
    report::print_header();
    let mut results: Vec<RunResult> = Vec::new();
    // Start-up, connection and teardown of each run, besides warm-up and measurement.
    let per_run = warmup + measured + Duration::from_millis(500);
    let runs: Vec<(u16, &Config)> = (0..args.rounds)
        .flat_map(|round| configs.iter().map(move |config| (round, config)))
        .collect();
    for (index, &(round, config)) in runs.iter().enumerate() {
        let left = per_run * (runs.len() - index) as u32;
        eprintln!(
            "bench-host: [{}/{}] round {} of {}: {}, about {} s left",
            index + 1,
            runs.len(),
            round + 1,
            args.rounds,
            report::describe(config),
            left.as_secs()
        );
        let result = run_config(args, *config, round, warmup, measured, &file_path)?;
        report::print_row(&result);
        results.push(result);
    }
    report::print_details(&results);
    report::print_scaling(&results);
    if let Some(path) = &args.json {
        report::write_json(path, header, &results)?;
        println!("\nresults written to {}", path.display());
    }
    let errors: u64 = results.iter().map(|r| r.errors).sum();
    match results.iter().find_map(|r| r.first_error.clone()) {
        Some(first) => Err(BenchError::FailedRequests {
            count: errors,
            first,
        }),
        None => Ok(()),
    }
}

/// What a reader needs to judge the figures: which server binary, how busy the machine was.
fn host_header(args: &Args) -> Result<Value, BenchError> {
    let binary = tests::server_process::server_binary()?;
    let debug_build = binary.components().any(|c| c.as_os_str() == "debug");
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    Ok(json!({
        "server_binary": binary.display().to_string(),
        "server_build": if debug_build { "debug (build with --release for real figures)" } else { "release" },
        "cpus": cpus,
        "load_average_at_start": cpu_time::load_average(),
        "file_disk": file_disk_location(args).display().to_string(),
        "file_disk_options": if args.disk_options.is_empty() { "(server defaults)" } else { &args.disk_options },
        "server_args": args.server_args,
        "queue_size": args.queue_size,
        "luns": args.luns,
        "null_latency_us": args.null_latency_us,
        "wait": args::name(args.wait),
        "warmup_seconds": args.warmup,
        "measured_seconds": args.seconds,
        "rounds": args.rounds,
        "callgrind": args.callgrind,
    }))
}
