//! What the control socket's requests do: one JSON object per line in, one per line out.
//!
//! Requests: `{"command":"query"}`, `{"command":"stats"}`, `{"command":"add-disk","spec":SPEC}`,
//! `{"command":"remove-disk","lun":N}`, `{"command":"resize","lun":N[,"size":SIZE]}`,
//! `{"command":"cont"[,"lun":N]}`,
//! `{"command":"set-log-level","level":LEVEL}`, `{"command":"set-mapping","mapping":JSON}`,
//! `{"command":"add-iothread","name":NAME}`, `{"command":"remove-iothread","name":NAME}`. Replies: `{"ok":true,"result":...}` or
//! `{"ok":false,"error":"what is wrong"}`; the daemon goes on either way. `remove-disk` replies
//! once the LUN's requests in flight are done and its disk is flushed (or it gives up waiting);
//! the main loop serves the device and other requests meanwhile (`pending_replies`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::ValueEnum;
use serde::Deserialize;
use serde_json::{json, Value};
use slog::{info, warn, Logger};
use virtio::{
    EventDelivery, LunState, LunStats, QueueStats, RemovedLun, ScsiDevice, ScsiDeviceError,
    VirtioDevice, LATENCY_BUCKETS, SENSE_KEYS,
};

use crate::cli::LogLevel;
use crate::control_socket::{ConnectionId, ControlReply, LineError};
use crate::controller::{open_lun, ControllerError};
use crate::disk_flush::{self, BackgroundFlush, DiskFlushError};
use crate::disk_spec::{parse_size, DiskSpec, DiskSpecError, SizeError, MAX_LUN};
use crate::iothread_pool::{IothreadPool, PoolError};
use crate::logging::LogControl;
use crate::mapping::QueueOwner;
use crate::virtio_function::VirtioFunction;
use vfio_user_server::ServerStatus;

/// How long `remove-disk` waits for the LUN's requests in flight before it gives up.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `remove-disk` waits for the removed disk's flush before it gives up.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// A control-socket request line, as JSON.
#[derive(Debug, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case", deny_unknown_fields)]
enum ControlRequest {
    // Braces, so that deny_unknown_fields also holds for requests without arguments.
    Query {},
    Stats {},
    AddDisk {
        spec: String,
    },
    RemoveDisk {
        lun: u16,
    },
    Resize {
        lun: u16,
        #[serde(default)]
        size: Option<String>,
    },
    /// Resumes LUNs paused by their error policy (QMP's `cont`): all, or `lun`.
    Cont {
        #[serde(default)]
        lun: Option<u16>,
    },
    SetLogLevel {
        level: String,
    },
    /// The mapping as QEMU's JSON, given as a JSON value or as a string holding it.
    SetMapping {
        mapping: Value,
    },
    AddIothread {
        name: String,
    },
    RemoveIothread {
        name: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    Line(#[from] LineError),
    #[error("bad request: {0}")]
    Request(serde_json::Error),
    #[error(transparent)]
    Spec(#[from] DiskSpecError),
    #[error("add-disk: {0}")]
    Open(#[from] ControllerError),
    #[error(transparent)]
    Device(#[from] ScsiDeviceError),
    #[error("resize: {0}")]
    Resize(#[from] block::BlockError),
    #[error("LUN {0} is in use")]
    LunInUse(u16),
    #[error("LUN {0} does not exist")]
    NoSuchLun(u16),
    #[error("no free LUN left (all of 0..={MAX_LUN} are in use)")]
    NoFreeLun,
    #[error("resize: {0}")]
    Size(#[from] SizeError),
    #[error("{command}: {source}")]
    Pool {
        command: &'static str,
        source: PoolError,
    },
    #[error("set-log-level: '{given}' is not one of error, warn, info, debug, trace")]
    LogLevel { given: String },
    #[error("remove-disk: LUN {lun} still has {in_flight} request(s) in flight after {seconds} s (tags: {tags}); it takes no new ones, and remove-disk {lun} again finishes the removal")]
    DrainTimeout {
        lun: u16,
        seconds: u64,
        in_flight: u64,
        tags: Tags,
    },
    #[error("remove-disk: LUN {0} is being removed already (waiting for its requests in flight or its flush)")]
    BeingRemoved(u16),
    #[error("remove-disk: LUN {lun} is removed, but the flush of {} failed, acknowledged writes may be lost: {source}", path.display())]
    RemovedUnflushed {
        lun: u16,
        path: PathBuf,
        source: DiskFlushError,
    },
    #[error("remove-disk: LUN {lun} is removed, but the flush of {} did not finish within {seconds} s", path.display())]
    FlushTimeout {
        lun: u16,
        path: PathBuf,
        seconds: u64,
    },
}

/// The tags of commands in flight, listed in a message.
#[derive(Debug)]
pub struct Tags(Vec<u64>);

impl std::fmt::Display for Tags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none with the engine");
        }
        for (i, tag) in self.0.iter().enumerate() {
            let separator = if i == 0 { "" } else { ", " };
            write!(f, "{separator}{tag}")?;
        }
        Ok(())
    }
}

impl ControlError {
    /// What a script may want from the error beyond its message.
    fn details(&self) -> Option<Value> {
        match self {
            ControlError::DrainTimeout {
                lun,
                in_flight,
                tags,
                ..
            } => Some(json!({"lun": lun, "requests": in_flight, "tags": tags.0})),
            _ => None,
        }
    }
}

/// A `remove-disk` waiting for the LUN's requests in flight, then for its disk's flush.
struct PendingRemoval {
    lun: u16,
    waiter: ConnectionId,
    stage: RemovalStage,
}

enum RemovalStage {
    Draining {
        removed: RemovedLun,
        started: Instant,
    },
    /// Drained and the driver told (`event`): the disk at `path` is being flushed.
    Flushing {
        flush: BackgroundFlush,
        path: PathBuf,
        event: Value,
    },
}

/// What became of a request: its result, or a wait whose reply `pending_replies` gives.
enum Progress {
    Done(Value),
    Waiting,
}

/// The state the commands read and change besides the device.
pub struct ControlCommands {
    pool: Arc<IothreadPool>,
    log_control: LogControl,
    num_queues: u16,
    queue_size: u16,
    /// LUNs whose removal timed out: gone from the target, waiting for their requests.
    draining: Vec<RemovedLun>,
    /// LUNs whose `remove-disk` waits for their requests in flight or their flush.
    removing: Vec<PendingRemoval>,
    log: Logger,
}

pub type Function = VirtioFunction<ScsiDevice>;

impl ControlCommands {
    pub fn new(
        pool: Arc<IothreadPool>,
        log_control: LogControl,
        num_queues: u16,
        queue_size: u16,
        log: Logger,
    ) -> ControlCommands {
        ControlCommands {
            pool,
            log_control,
            num_queues,
            queue_size,
            draining: Vec::new(),
            removing: Vec::new(),
            log,
        }
    }

    /// Answers one request line from `connection`, now or (`ControlReply::Later`) through
    /// `pending_replies`.
    pub fn reply(
        &mut self,
        device: &mut Function,
        status: ServerStatus,
        connection: ConnectionId,
        line: Result<&str, LineError>,
    ) -> ControlReply {
        let result = line
            .map_err(ControlError::from)
            .and_then(|line| {
                serde_json::from_str::<ControlRequest>(line).map_err(ControlError::Request)
            })
            .and_then(|request| self.execute(device, status, connection, request));
        match result {
            Ok(Progress::Done(result)) => ControlReply::Now(self.reply_line(Ok(result))),
            Ok(Progress::Waiting) => ControlReply::Later,
            Err(error) => ControlReply::Now(self.reply_line(Err(error))),
        }
    }

    /// Whether a reply is waiting for something to finish (`pending_replies` must be called
    /// until there is none).
    pub fn waiting(&self) -> bool {
        !self.removing.is_empty()
    }

    /// The replies whose wait is over: removals whose LUN drained and whose disk was flushed,
    /// and those that gave up waiting. A LUN that drained starts its flush here.
    pub fn pending_replies(&mut self, device: &mut Function) -> Vec<(ConnectionId, String)> {
        let mut replies = Vec::new();
        let mut index = 0;
        while index < self.removing.len() {
            let ready = match &self.removing[index].stage {
                RemovalStage::Draining { removed, started } => {
                    removed.drained() || started.elapsed() > DRAIN_TIMEOUT
                }
                RemovalStage::Flushing { flush, .. } => {
                    flush.finished() || flush.elapsed() > FLUSH_TIMEOUT
                }
            };
            if !ready {
                index += 1;
                continue;
            }
            let PendingRemoval { lun, waiter, stage } = self.removing.swap_remove(index);
            let result = match stage {
                RemovalStage::Draining { removed, started } if removed.drained() => {
                    match self.after_drain(device, removed, started, waiter) {
                        Ok(Progress::Waiting) => continue,
                        Ok(Progress::Done(result)) => Ok(result),
                        Err(error) => Err(error),
                    }
                }
                RemovalStage::Draining { removed, .. } => {
                    Err(self.drain_timed_out(device, removed))
                }
                RemovalStage::Flushing { flush, path, event } => {
                    self.flush_done(lun, flush, path, event)
                }
            };
            replies.push((waiter, self.reply_line(result)));
        }
        replies
    }

    fn reply_line(&self, result: Result<Value, ControlError>) -> String {
        let reply = match result {
            Ok(result) => json!({"ok": true, "result": result}),
            Err(error) => {
                warn!(self.log, "control request failed"; "error" => %error);
                let mut reply = json!({"ok": false, "error": error.to_string()});
                if let Some(details) = error.details() {
                    reply["in_flight"] = details;
                }
                reply
            }
        };
        reply.to_string()
    }

    fn execute(
        &mut self,
        device: &mut Function,
        status: ServerStatus,
        connection: ConnectionId,
        request: ControlRequest,
    ) -> Result<Progress, ControlError> {
        let done = match request {
            ControlRequest::RemoveDisk { lun } => return self.remove_disk(device, lun, connection),
            ControlRequest::Query {} => self.query(device, status),
            ControlRequest::Stats {} => self.stats(device),
            ControlRequest::AddDisk { spec } => self.add_disk(device, &spec)?,
            ControlRequest::Resize { lun, size } => self.resize(device, lun, size.as_deref())?,
            ControlRequest::Cont { lun } => self.cont(device, lun)?,
            ControlRequest::SetMapping { mapping } => {
                let json = match mapping {
                    Value::String(text) => text,
                    other => other.to_string(),
                };
                let moves = self
                    .pool
                    .set_mapping(&json, usize::from(self.num_queues))
                    .map_err(|source| ControlError::Pool {
                        command: "set-mapping",
                        source,
                    })?;
                let moved: Vec<Value> = moves
                    .iter()
                    .map(|m| json!({"vq": m.vq, "from": m.from, "to": m.to}))
                    .collect();
                json!({"moved": moved})
            }
            ControlRequest::AddIothread { name } => {
                self.pool
                    .add_iothread(&name)
                    .map_err(|source| ControlError::Pool {
                        command: "add-iothread",
                        source,
                    })?;
                json!({"iothread": name})
            }
            ControlRequest::RemoveIothread { name } => {
                self.pool
                    .remove_iothread(&name)
                    .map_err(|source| ControlError::Pool {
                        command: "remove-iothread",
                        source,
                    })?;
                json!({"iothread": name})
            }
            ControlRequest::SetLogLevel { level } => {
                let level =
                    LogLevel::from_str(&level, true).map_err(|_| ControlError::LogLevel {
                        given: level.clone(),
                    })?;
                self.log_control.set_level(level);
                info!(self.log, "log level set"; "level" => level.name());
                json!({"level": level.name()})
            }
        };
        Ok(Progress::Done(done))
    }

    fn query(&self, device: &Function, status: ServerStatus) -> Value {
        let names = self.pool.iothread_names();
        let owner = |vq: u16| match self.pool.owner(vq) {
            QueueOwner::Iothread(i) => names.get(i).map_or("main-loop", String::as_str),
            QueueOwner::MainLoop => "main-loop",
        };
        let queues: Vec<Value> = (0..self.num_queues + 2)
            .map(|vq| {
                let name = match vq {
                    0 => "ctrl".to_string(),
                    1 => "event".to_string(),
                    n => format!("request{}", n - 2),
                };
                json!({"vq": vq, "name": name, "iothread": owner(vq)})
            })
            .collect();
        let function = device.function();
        let luns: Vec<Value> = function.device().luns().iter().map(lun_json).collect();
        json!({
            "version": crate::cli::VERSION,
            "device": {
                "type": "virtio-scsi",
                "num_queues": self.num_queues,
                "queue_size": self.queue_size,
                "driver_ok": function.driver_ok(),
            },
            "client": {"connected": status.client_connected},
            "iothreads": names,
            "queues": queues,
            "luns": luns,
            "log": {
                "level": self.log_control.level().name(),
                "file": self.log_control.file().map(|p| p.display().to_string()),
                "dropped_records": self.log_control.dropped(),
            },
        })
    }

    /// Counters since the server started: per request queue, their sum, per LUN (since it was
    /// added) and per iothread.
    fn stats(&self, device: &Function) -> Value {
        let scsi = device.function().device();
        let queues = scsi.queue_stats();
        let states = scsi.luns();
        let luns: Vec<Value> = scsi
            .lun_stats()
            .iter()
            .map(|stats| {
                let mut lun = lun_stats_json(stats);
                // What the error policy holds: requests waiting for `cont`, and pauses so far.
                if let Some(state) = states.iter().find(|state| state.config.lun == stats.lun) {
                    let status = state.disk.io_status();
                    lun["held"] = json!(status.held());
                    lun["pauses"] = json!(status.stops());
                }
                lun
            })
            .collect();
        let mut total = QueueStats {
            vq: 0,
            ..QueueStats::default()
        };
        for queue in &queues {
            total.requests += queue.requests;
            total.bytes_read += queue.bytes_read;
            total.bytes_written += queue.bytes_written;
            total.transport_failures += queue.transport_failures;
            total.bad_targets += queue.bad_targets;
            total.in_flight += queue.in_flight;
            total.kicks += queue.kicks;
            total.interrupts += queue.interrupts;
            total.interrupts_deferred += queue.interrupts_deferred;
            total.rechecks += queue.rechecks;
            for (sum, n) in total
                .errors_by_sense_key
                .iter_mut()
                .zip(queue.errors_by_sense_key)
            {
                *sum += n;
            }
            for (sum, n) in total.latency.iter_mut().zip(queue.latency) {
                *sum += n;
            }
        }
        let iothreads: Vec<Value> = self
            .pool
            .iothread_stats()
            .into_iter()
            .map(|stats| {
                json!({"name": stats.name, "busy_ns": stats.busy_ns, "poll_ns": stats.poll_ns,
                       "sleep_ns": stats.sleep_ns})
            })
            .collect();
        let mut total = queue_json(&total);
        if let Some(object) = total.as_object_mut() {
            object.remove("vq");
        }
        json!({
            "queues": queues.iter().map(queue_json).collect::<Vec<_>>(),
            "total": total,
            "luns": luns,
            "iothreads": iothreads,
            // Heap allocations since start, with the count-allocations feature (benchmarks).
            "allocations": crate::allocation_counter::allocations(),
        })
    }

    fn add_disk(&mut self, device: &mut Function, spec: &str) -> Result<Value, ControlError> {
        let spec: DiskSpec = spec.parse()?;
        let used: Vec<u16> = device
            .function()
            .device()
            .luns()
            .iter()
            .map(|lun| lun.config.lun)
            .chain(self.draining.iter().map(RemovedLun::lun))
            .chain(self.removing.iter().map(|pending| pending.lun))
            .collect();
        let lun = match spec.lun {
            Some(lun) if used.contains(&lun) => return Err(ControlError::LunInUse(lun)),
            Some(lun) => lun,
            None => (0..=MAX_LUN)
                .find(|lun| !used.contains(lun))
                .ok_or(ControlError::NoFreeLun)?,
        };
        let (config, disk) = open_lun(&spec, lun, &self.log)
            .map_err(|source| ControlError::Open(ControllerError::Disk(source)))?;
        let state = LunState {
            config: config.clone(),
            disk: Arc::clone(&disk),
        };
        let delivery = device.function_mut().device_mut().add_lun(config, disk)?;
        info!(self.log, "lun added"; "lun" => lun, "event" => delivery_name(delivery));
        let mut reply = lun_json(&state);
        reply["event"] = json!(delivery_name(delivery));
        Ok(reply)
    }

    /// Takes the LUN from the target; the reply comes once its requests in flight are done.
    /// Requests its error policy held are answered as aborted rather than waited for, since
    /// only `cont` would ever run them.
    fn remove_disk(
        &mut self,
        device: &mut Function,
        lun: u16,
        waiter: ConnectionId,
    ) -> Result<Progress, ControlError> {
        if self.removing.iter().any(|pending| pending.lun == lun) {
            return Err(ControlError::BeingRemoved(lun));
        }
        let at = self
            .draining
            .iter()
            .position(|draining| draining.lun() == lun);
        let held = device
            .function()
            .device()
            .luns()
            .into_iter()
            .find(|state| state.config.lun == lun)
            .map_or(0, |state| state.disk.io_status().held());
        let removed = match at {
            Some(at) => self.draining.remove(at),
            None => match device.function_mut().device_mut().remove_lun(lun) {
                Ok(removed) => removed,
                Err(ScsiDeviceError::Target(scsi_disk::TargetError::NoSuchLun(_))) => {
                    return Err(ControlError::NoSuchLun(lun))
                }
                Err(e) => return Err(e.into()),
            },
        };
        let started = Instant::now();
        if removed.drained() {
            return self.after_drain(device, removed, started, waiter);
        }
        info!(self.log, "lun draining"; "lun" => lun, "in_flight" => removed.stats().in_flight,
              "held_aborted" => held);
        self.removing.push(PendingRemoval {
            lun,
            waiter,
            stage: RemovalStage::Draining { removed, started },
        });
        Ok(Progress::Waiting)
    }

    /// The removed LUN drained: the driver is told, and a disk with writes to make durable
    /// is flushed on a thread of its own (QEMU flushes a drive it removes); the reply waits
    /// for the flush.
    fn after_drain(
        &mut self,
        device: &mut Function,
        removed: RemovedLun,
        started: Instant,
        waiter: ConnectionId,
    ) -> Result<Progress, ControlError> {
        let lun = removed.lun();
        let event = self.lun_drained(device, &removed, started);
        let disk = removed.disk();
        let Some(path) = disk
            .path()
            .filter(|_| disk_flush::needs_flush(disk))
            .map(PathBuf::from)
        else {
            return Ok(Progress::Done(event));
        };
        let flush = BackgroundFlush::start(Arc::clone(disk), lun).map_err(|source| {
            ControlError::RemovedUnflushed {
                lun,
                path: path.clone(),
                source,
            }
        })?;
        self.removing.push(PendingRemoval {
            lun,
            waiter,
            stage: RemovalStage::Flushing { flush, path, event },
        });
        Ok(Progress::Waiting)
    }

    /// The removed disk's flush finished or is given up on (a hung backend keeps its thread).
    fn flush_done(
        &self,
        lun: u16,
        flush: BackgroundFlush,
        path: PathBuf,
        mut event: Value,
    ) -> Result<Value, ControlError> {
        if !flush.finished() {
            return Err(ControlError::FlushTimeout {
                lun,
                path,
                seconds: FLUSH_TIMEOUT.as_secs(),
            });
        }
        match flush.result() {
            Ok(took) => {
                info!(self.log, "disk flushed"; "lun" => lun, "path" => %path.display(),
                      "ms" => took.as_millis() as u64);
                event["flushed_in_ms"] = json!(took.as_millis() as u64);
                Ok(event)
            }
            Err(source) => Err(ControlError::RemovedUnflushed { lun, path, source }),
        }
    }

    /// No request holds the removed LUN any more: the driver is told it is gone.
    fn lun_drained(&self, device: &mut Function, removed: &RemovedLun, started: Instant) -> Value {
        let lun = removed.lun();
        let delivery = device.function_mut().device_mut().lun_removed(lun);
        info!(self.log, "lun removed"; "lun" => lun, "event" => delivery_name(delivery),
              "drained_in_us" => started.elapsed().as_micros() as u64);
        json!({"lun": lun, "event": delivery_name(delivery)})
    }

    /// The removed LUN still has requests after the timeout: it stays out of the target and
    /// waits for another `remove-disk`; the error lists what it waits for.
    fn drain_timed_out(&mut self, device: &Function, removed: RemovedLun) -> ControlError {
        let lun = removed.lun();
        let tags: Vec<u64> = device
            .function()
            .device()
            .commands_in_flight()
            .into_iter()
            .filter(|(of, _)| *of == lun)
            .map(|(_, tag)| tag)
            .collect();
        let error = ControlError::DrainTimeout {
            lun,
            seconds: DRAIN_TIMEOUT.as_secs(),
            in_flight: removed.stats().in_flight,
            tags: Tags(tags),
        };
        self.draining.push(removed);
        error
    }

    fn resize(
        &mut self,
        device: &mut Function,
        lun: u16,
        size: Option<&str>,
    ) -> Result<Value, ControlError> {
        let size = size
            .map(parse_size)
            .transpose()
            .map_err(ControlError::Size)?;
        let scsi = device.function_mut().device_mut();
        let disk = scsi
            .luns()
            .into_iter()
            .find(|state| state.config.lun == lun)
            .ok_or(ControlError::NoSuchLun(lun))?
            .disk;
        let old = disk.size();
        let new = disk.resize(size)?;
        let delivery = scsi.lun_resized(lun)?;
        info!(self.log, "lun resized"; "lun" => lun, "old_size" => old, "size" => new,
              "event" => delivery_name(delivery));
        Ok(json!({"lun": lun, "old_size": old, "size": new, "event": delivery_name(delivery)}))
    }

    /// Resumes the paused LUNs (or `lun`); replies with those that were paused.
    fn cont(&mut self, device: &mut Function, lun: Option<u16>) -> Result<Value, ControlError> {
        let scsi = device.function().device();
        let luns: Vec<LunState> = scsi
            .luns()
            .into_iter()
            .filter(|state| lun.is_none_or(|lun| lun == state.config.lun))
            .collect();
        if let (Some(lun), true) = (lun, luns.is_empty()) {
            return Err(ControlError::NoSuchLun(lun));
        }
        let mut resumed = Vec::new();
        for state in luns {
            let lun = state.config.lun;
            let held = state.disk.io_status().held();
            if state.disk.io_status().resume() {
                info!(self.log, "lun resumed"; "lun" => lun, "held" => held);
                resumed.push(json!({"lun": lun, "held": held}));
            }
        }
        scsi.wake_held_requests();
        Ok(json!({"resumed": resumed}))
    }
}

/// QEMU's io-status names: why a LUN is paused, or "ok".
fn io_status_json(disk: &block::Disk) -> Value {
    let status = disk.io_status();
    let policy = disk.error_policy();
    let state = match (status.is_stopped(), status.reason()) {
        (false, _) => "ok",
        (true, Some(libc::ENOSPC)) => "nospace",
        (true, _) => "failed",
    };
    json!({
        "werror": match policy.write {
            block::OnWriteError::Report => "report",
            block::OnWriteError::Enospc => "enospc",
            block::OnWriteError::Stop => "stop",
        },
        "rerror": match policy.read {
            block::OnReadError::Report => "report",
            block::OnReadError::Stop => "stop",
        },
        "paused": status.is_stopped(),
        "io_status": state,
        "reason": status.reason().map(|errno| std::io::Error::from_raw_os_error(errno).to_string()),
        "held": status.held(),
        "pauses": status.stops(),
    })
}

fn lun_json(state: &LunState) -> Value {
    let config = &state.config;
    let disk = &state.disk;
    let mut lun = lun_json_fields(config, disk);
    lun["error_policy"] = io_status_json(disk);
    lun
}

fn lun_json_fields(config: &scsi_disk::LunConfig, disk: &block::Disk) -> Value {
    json!({
        "lun": config.lun,
        "path": disk.path().map(|p| p.display().to_string()),
        "null": disk.is_null(),
        "size": disk.size(),
        "logical_block_size": config.block_size,
        "read_only": config.read_only,
        "serial": config.serial,
        "cache": if disk.direct_io_alignment().is_some() { "none" } else { "writeback" },
        "discard": if config.discard { "unmap" } else { "ignore" },
    })
}

/// Sense key names (SPC-4 table 54) for the errors of a queue.
const SENSE_KEY_NAMES: [&str; SENSE_KEYS] = [
    "no_sense",
    "recovered_error",
    "not_ready",
    "medium_error",
    "hardware_error",
    "illegal_request",
    "unit_attention",
    "data_protect",
    "blank_check",
    "vendor_specific",
    "copy_aborted",
    "aborted_command",
    "reserved_0c",
    "volume_overflow",
    "miscompare",
    "completed",
];

fn queue_json(stats: &QueueStats) -> Value {
    json!({
        "vq": stats.vq,
        "requests": stats.requests,
        "bytes_read": stats.bytes_read,
        "bytes_written": stats.bytes_written,
        "errors": stats.errors(),
        "errors_by_sense_key": errors_json(&stats.errors_by_sense_key),
        "transport_failures": stats.transport_failures,
        "bad_targets": stats.bad_targets,
        "in_flight": stats.in_flight,
        "kicks": stats.kicks,
        "interrupts": stats.interrupts,
        "interrupts_deferred": stats.interrupts_deferred,
        "rechecks": stats.rechecks,
        "latency_us": latency_json(&stats.latency),
    })
}

/// A LUN's counters, in the shape of a queue's (kicks, interrupts and transport failures belong
/// to queues, not LUNs).
fn lun_stats_json(stats: &LunStats) -> Value {
    json!({
        "lun": stats.lun,
        "requests": stats.requests,
        "bytes_read": stats.bytes_read,
        "bytes_written": stats.bytes_written,
        "errors": stats.errors(),
        "errors_by_sense_key": errors_json(&stats.errors_by_sense_key),
        "in_flight": stats.in_flight,
        "latency_us": latency_json(&stats.latency),
    })
}

/// The sense keys that were answered, by name.
fn errors_json(errors_by_sense_key: &[u64; SENSE_KEYS]) -> Value {
    let errors: serde_json::Map<String, Value> = SENSE_KEY_NAMES
        .iter()
        .zip(errors_by_sense_key)
        .filter(|(_, count)| **count > 0)
        .map(|(name, count)| (name.to_string(), json!(count)))
        .collect();
    Value::Object(errors)
}

/// Percentiles as the upper bound of the histogram bucket they fall in (bucket 0 is under
/// 1 us, bucket i is [2^(i-1), 2^i) us), and the histogram itself.
fn latency_json(histogram: &[u64; LATENCY_BUCKETS]) -> Value {
    let total: u64 = histogram.iter().sum();
    let percentile = |fraction: f64| -> Option<u64> {
        if total == 0 {
            return None;
        }
        let wanted = (total as f64 * fraction).ceil().max(1.0) as u64;
        let mut seen = 0;
        histogram.iter().enumerate().find_map(|(bucket, count)| {
            seen += count;
            (seen >= wanted).then(|| 1u64 << bucket)
        })
    };
    json!({
        "p50_at_most": percentile(0.50),
        "p90_at_most": percentile(0.90),
        "p99_at_most": percentile(0.99),
        "p999_at_most": percentile(0.999),
        "histogram": histogram.to_vec(),
    })
}

fn delivery_name(delivery: EventDelivery) -> &'static str {
    match delivery {
        EventDelivery::Delivered => "delivered",
        EventDelivery::Dropped => "missed (EVENTS_MISSED follows)",
        EventDelivery::NotNegotiated => "not negotiated",
        EventDelivery::Inactive => "device not running",
    }
}
