//! The server's own counters: driver notifications, interrupts, heap allocations and where each
//! iothread's time went (busy serving, polling in vain, asleep). Over the
//! measured window they come from `ctl stats` at both of its ends; over the whole connection
//! (warm-up and set-up included) from the records the server logs (as JSON) when the driver
//! disconnects. A server without them (an older build, or one built without the
//! `count-allocations` feature for allocations) leaves the figures out.

use serde_json::Value;

#[derive(Debug, Default, Clone, PartialEq)]
pub struct ServerCounters {
    /// Requests the server answered, summed over its request queues.
    pub requests: u64,
    pub kicks: u64,
    pub interrupts: u64,
    /// Passes that left their interrupt to a later look (0 from a server without the counter).
    pub interrupts_deferred: u64,
    /// Looks the re-check timer made in place of kicks (0 from a server without the counter).
    pub rechecks: u64,
    pub allocations: Option<u64>,
    /// Only from `ctl stats`: the log records do not carry them.
    pub iothreads: Vec<IothreadTime>,
}

/// An iothread's own clock (server/src/iothread.rs `TimeCounters`): busy is serving queues and
/// commands; polling queues that had no work and sleeping are apart.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct IothreadTime {
    pub name: String,
    pub busy_ns: u64,
    pub poll_ns: u64,
    pub sleep_ns: u64,
}

impl ServerCounters {
    /// The counters in a server's JSON log, or None when it logged no "queue stats" record.
    pub fn parse(log: &str) -> Option<ServerCounters> {
        let mut counters = ServerCounters::default();
        let mut queues = 0;
        for record in log
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        {
            let field = |name: &str| record[name].as_u64().unwrap_or(0);
            match record["msg"].as_str() {
                Some("queue stats") => {
                    queues += 1;
                    counters.requests += field("requests");
                    counters.kicks += field("kicks");
                    counters.interrupts += field("interrupts");
                    counters.interrupts_deferred += field("interrupts_deferred");
                    counters.rechecks += field("rechecks");
                }
                Some("allocations") => counters.allocations = record["count"].as_u64(),
                _ => {}
            }
        }
        (queues > 0).then_some(counters)
    }

    /// The totals in a `ctl stats` reply.
    pub fn from_stats(reply: &str) -> Option<ServerCounters> {
        let reply: Value = serde_json::from_str(reply).ok()?;
        let result = &reply["result"];
        let total = &result["total"];
        let iothreads = result["iothreads"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|thread| {
                Some(IothreadTime {
                    name: thread["name"].as_str()?.to_string(),
                    busy_ns: thread["busy_ns"].as_u64()?,
                    poll_ns: thread["poll_ns"].as_u64()?,
                    sleep_ns: thread["sleep_ns"].as_u64()?,
                })
            })
            .collect();
        Some(ServerCounters {
            requests: total["requests"].as_u64()?,
            kicks: total["kicks"].as_u64()?,
            interrupts: total["interrupts"].as_u64()?,
            interrupts_deferred: total["interrupts_deferred"].as_u64().unwrap_or(0),
            rechecks: total["rechecks"].as_u64().unwrap_or(0),
            allocations: result["allocations"].as_u64(),
            iothreads,
        })
    }

    /// What was counted between three `ctl stats` replies: `start` and `probe` back to back
    /// when the window opens (their difference in allocations is what one `stats` request
    /// costs the server), `end` when it closes. The allocations of answering `end` are left out.
    pub fn window(start: &Self, probe: &Self, end: &Self) -> ServerCounters {
        let stats_request = probe.allocations.zip(start.allocations).map(|(p, s)| p - s);
        ServerCounters {
            requests: end.requests.saturating_sub(probe.requests),
            kicks: end.kicks.saturating_sub(probe.kicks),
            interrupts: end.interrupts.saturating_sub(probe.interrupts),
            interrupts_deferred: end
                .interrupts_deferred
                .saturating_sub(probe.interrupts_deferred),
            rechecks: end.rechecks.saturating_sub(probe.rechecks),
            allocations: end
                .allocations
                .zip(probe.allocations)
                .zip(stats_request)
                .map(|((e, p), cost)| e.saturating_sub(p).saturating_sub(cost)),
            iothreads: end
                .iothreads
                .iter()
                .filter_map(|e| {
                    let p = probe.iothreads.iter().find(|p| p.name == e.name)?;
                    Some(IothreadTime {
                        name: e.name.clone(),
                        busy_ns: e.busy_ns.saturating_sub(p.busy_ns),
                        poll_ns: e.poll_ns.saturating_sub(p.poll_ns),
                        sleep_ns: e.sleep_ns.saturating_sub(p.sleep_ns),
                    })
                })
                .collect(),
        }
    }

    pub fn per_request(&self, count: u64) -> f64 {
        count as f64 / self.requests.max(1) as f64
    }

    pub fn kicks_per_request(&self) -> f64 {
        self.per_request(self.kicks)
    }

    pub fn interrupts_per_request(&self) -> f64 {
        self.per_request(self.interrupts)
    }

    pub fn signalling(&self) -> String {
        format!(
            "{:.4} kicks, {:.4} interrupts, {:.4} deferred, {:.4} re-checks",
            self.per_request(self.kicks),
            self.per_request(self.interrupts),
            self.per_request(self.interrupts_deferred),
            self.per_request(self.rechecks),
        )
    }

    pub fn allocations_per_request(&self) -> Option<f64> {
        self.allocations.map(|count| self.per_request(count))
    }
}
