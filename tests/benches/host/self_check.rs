//! Checks of the benchmark's own arithmetic and parsers. A `harness = false` target has no test
//! runner, so `cargo test --benches` runs these (and nothing else) through `main`.

use std::time::Duration;

use clap::Parser;

use crate::args::{Args, DiskKind, Kick, Pattern};
use crate::callgrind::{count_calls, parse_totals};
use crate::cpu_time::{
    parse_proc_stat, parse_schedstat, parse_stat, parse_switches, usage_between, MachineCpu,
    ThreadCpu,
};
use crate::latency::{Latencies, PassTimes};
use crate::run::{parse_resident, Resident};
use crate::server_counters::ServerCounters;
use crate::syscalls::{parse_per_thread, SyscallCounts, ThreadSyscalls};

pub fn run() {
    stat_fields_are_counted_from_the_last_parenthesis();
    schedstat_and_switches_parse();
    usage_is_the_growth_per_thread();
    percentiles_are_nearest_rank();
    resident_memory_parses();
    the_default_matrix_and_narrowed_ones();
    server_counters_sum_the_request_queues();
    window_counters_leave_out_the_stats_requests();
    perf_per_thread_counts_parse();
    the_median_pass_leaves_out_a_preempted_one();
    machine_cpu_counts_busy_and_stolen_ticks();
    callgrind_profiles_give_instructions_and_requests();
}

fn callgrind_profiles_give_instructions_and_requests() {
    let text = "events: Ir\n\
                fn=(1) server::queue_set::QueueSet::serve\n\
                0 50\n\
                cfn=(2) scsi_disk::commands::execute\n\
                calls=700 0\n\
                0 9000\n\
                cfn=(3) scsi_disk::commands::execute_later\n\
                calls=5 0\n\
                0 10\n\
                fn=(4) virtio::scsi_device::request_queue::RequestQueueWorker::poll\n\
                cfn=(2)\n\
                calls=300 0\n\
                0 4000\n\
                fn=(2)\n\
                0 13000\n\
                totals: 1234567\n";
    assert_eq!(parse_totals(text), Some(1_234_567));
    assert_eq!(count_calls(text, "scsi_disk::commands::execute"), 1000);
    assert_eq!(
        count_calls(
            "cfn=scsi_disk::commands::execute::h0123456789abcdef\ncalls=7 0\n",
            "scsi_disk::commands::execute"
        ),
        7,
        "an uncompressed name that kept its hash"
    );
}

fn machine_cpu_counts_busy_and_stolen_ticks() {
    let text = "cpu  100 2 30 5000 7 4 6 9 0 0\ncpu0 50 1 15 2500 3 2 3 4 0 0\nintr 1\n";
    assert_eq!(
        parse_proc_stat(text, 10),
        Some(MachineCpu {
            busy_ns: (100 + 2 + 30 + 4 + 6) * 10,
            steal_ns: 90,
        })
    );
    assert_eq!(parse_proc_stat("cpu0 1 2 3\n", 10), None);
}

fn the_median_pass_leaves_out_a_preempted_one() {
    let mut passes = PassTimes::default();
    for _ in 0..9 {
        passes.record(Duration::from_nanos(32 * 100), 32);
    }
    // Preempted for 4 ms in the middle of one pass of 32 requests.
    passes.record(Duration::from_millis(4), 32);
    passes.record(Duration::from_nanos(500), 0);
    assert_eq!(passes.median_ns_per_request(), Some(100));
    assert_eq!(PassTimes::default().median_ns_per_request(), None);
}

fn perf_per_thread_counts_parse() {
    let text = "# started on Wed Dec  2 06:31:40 2026\n\n\
                vfio-user-scsi-4242,37,,raw_syscalls:sys_enter,1000,100.00,,\n\
                io-0-4243,<not counted>,,raw_syscalls:sys_enter,0,100.00,,\n";
    let threads = parse_per_thread(text).unwrap();
    assert_eq!(
        threads,
        [
            ThreadSyscalls {
                tid: 4242,
                count: 37
            },
            ThreadSyscalls {
                tid: 4243,
                count: 0
            }
        ]
    );
    let counts = SyscallCounts::Counted {
        threads,
        span: Duration::from_secs(2),
    };
    assert_eq!(counts.in_window(4242, Duration::from_secs(1)), Some(18.5));
    assert_eq!(counts.in_window(7, Duration::from_secs(1)), Some(0.0));
    assert_eq!(
        parse_per_thread("x-1,<not supported>,,raw_syscalls:sys_enter,0,0,,\n"),
        None,
        "an event perf cannot count is no count at all"
    );
    assert_eq!(
        SyscallCounts::Unavailable("no perf".into()).in_window(1, Duration::from_secs(1)),
        None
    );
}

fn window_counters_leave_out_the_stats_requests() {
    let stats = |requests: u64, allocations: u64| {
        let reply = format!(
            r#"{{"ok":true,"result":{{"allocations":{allocations},"total":{{"requests":{requests},"kicks":{},"interrupts":{}}},"iothreads":[{{"name":"io0","busy_ns":{},"poll_ns":{},"sleep_ns":0}}]}}}}"#,
            requests / 32,
            requests / 16,
            requests,
            requests / 10
        );
        ServerCounters::from_stats(&reply).unwrap()
    };
    // One stats request costs 40 allocations; the 6400 requests in between cost none.
    let window = ServerCounters::window(&stats(1000, 5000), &stats(1600, 5040), &stats(8000, 5080));
    assert_eq!(window.requests, 6400);
    assert_eq!(window.kicks_per_request(), 0.03125);
    assert_eq!(window.allocations_per_request(), Some(0.0));
    assert_eq!(
        window.iothreads[0].busy_ns, 6400,
        "the probe is where the window opens"
    );
    assert_eq!(window.iothreads[0].poll_ns, 640);
    let without = ServerCounters::from_stats(
        r#"{"ok":true,"result":{"allocations":null,"total":{"requests":1,"kicks":0,"interrupts":0}}}"#,
    )
    .unwrap();
    assert_eq!(without.allocations, None);
    assert_eq!(ServerCounters::from_stats(r#"{"ok":false}"#), None);
}

fn server_counters_sum_the_request_queues() {
    let log = r#"{"msg":"client disconnected","level":"INFO"}
{"msg":"allocations","count":500}
{"msg":"queue stats","vq":2,"requests":600,"kicks":6,"interrupts":60,"interrupts_deferred":3,"rechecks":12}
{"msg":"queue stats","vq":3,"requests":400,"kicks":4,"interrupts":40}
not json"#;
    let counters = ServerCounters::parse(log).unwrap();
    assert_eq!(counters.requests, 1000);
    assert_eq!(counters.kicks_per_request(), 0.01);
    assert_eq!(counters.interrupts_per_request(), 0.1);
    assert_eq!(
        counters.signalling(),
        "0.0100 kicks, 0.1000 interrupts, 0.0030 deferred, 0.0120 re-checks"
    );
    assert_eq!(counters.allocations_per_request(), Some(0.5));
    assert_eq!(ServerCounters::parse("{\"msg\":\"x\"}"), None);
}

fn stat_fields_are_counted_from_the_last_parenthesis() {
    let line = "4242 (io (0) x) S 1 4242 4242 0 -1 4194560 120 0 0 0 731 1402 0 0 20 0 3 0 \
                99 0 0 18446744073709551615";
    assert_eq!(parse_stat(line), Some(("io (0) x".to_string(), 731, 1402)));
    assert_eq!(parse_stat("4242 (short) S 1 2"), None);
}

fn schedstat_and_switches_parse() {
    assert_eq!(parse_schedstat("123456789 5000 42\n"), Some(123_456_789));
    let status = "Name:\tvfio-user-scsi\nvoluntary_ctxt_switches:\t17\n\
                  nonvoluntary_ctxt_switches:\t3\n";
    assert_eq!(parse_switches(status), Some((17, 3)));
    assert_eq!(parse_switches("Name:\tx\n"), None);
}

fn usage_is_the_growth_per_thread() {
    let thread = |tid, run_ns| ThreadCpu {
        tid,
        comm: "t".into(),
        run_ns,
        ..ThreadCpu::default()
    };
    let usage = usage_between(&[thread(1, 100)], &[thread(1, 250), thread(2, 40)]);
    assert_eq!(
        usage.iter().map(|t| (t.tid, t.run_ns)).collect::<Vec<_>>(),
        [(1, 150), (2, 40)],
        "a thread born inside the window counts from zero"
    );
}

fn resident_memory_parses() {
    let status = "Name:\tvfio-user-scsi\nVmPeak:\t  99999 kB\nVmRSS:\t    5120 kB\n\
                  RssAnon:\t    1024 kB\nRssFile:\t    4096 kB\n";
    assert_eq!(
        parse_resident(status),
        Some(Resident {
            total_kib: 5120,
            anon_kib: 1024
        })
    );
    assert_eq!(parse_resident("Name:\tx\nVmRSS:\t1 kB\n"), None);
}

fn percentiles_are_nearest_rank() {
    let mut latencies = Latencies::default();
    for us in (1..=1000).rev() {
        latencies.record(Duration::from_micros(us));
    }
    assert_eq!(latencies.len(), 1000);
    let s = latencies.summary();
    assert_eq!((s.p50_us, s.p99_us, s.p999_us), (500.0, 990.0, 999.0));
    assert_eq!((s.mean_us, s.max_us), (500.5, 1000.0));
    assert_eq!(Latencies::default().summary().p99_us, 0.0);
}

fn the_default_matrix_and_narrowed_ones() {
    let args = Args::parse_from(["host"]);
    let configs = args.configurations().unwrap();
    assert_eq!(configs.len(), 8, "null/file x socket/iofd x 1/2 queues");
    assert!(configs
        .iter()
        .all(|c| c.depth == 32 && c.bs == 4096 && c.rw == Pattern::Randread));
    let args = Args::parse_from([
        "host", "--disk", "null", "--kick", "iofd", "--queues", "1,4",
    ]);
    let configs = args.configurations().unwrap();
    assert_eq!(
        configs
            .iter()
            .map(|c| (c.disk, c.kick, c.queues))
            .collect::<Vec<_>>(),
        [
            (DiskKind::Null, Kick::Iofd, 1),
            (DiskKind::Null, Kick::Iofd, 4)
        ]
    );
    let args = Args::parse_from([
        "host",
        "--disk",
        "null",
        "--kick",
        "socket",
        "--queues",
        "1,2",
        "--iothreads",
        "0,1,2",
        "--depth",
        "32,1024",
    ]);
    let configs = args.configurations().unwrap();
    assert_eq!(
        configs
            .iter()
            .map(|c| (c.queues, c.iothreads, c.depth))
            .collect::<Vec<_>>(),
        [
            (1, Some(0), 32),
            (1, Some(0), 1024),
            (1, Some(1), 32),
            (1, Some(1), 1024),
            (2, Some(0), 32),
            (2, Some(0), 1024),
            (2, Some(1), 32),
            (2, Some(1), 1024),
            (2, Some(2), 32),
            (2, Some(2), 1024),
        ],
        "more iothreads than queues are skipped"
    );
    assert!(Args::parse_from(["host", "--depth", "0"])
        .configurations()
        .is_err());
    assert!(Args::parse_from(["host", "--seconds", "0"])
        .measured()
        .is_err());
}
