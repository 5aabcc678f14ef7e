//! `vfio-user-scsi`: parses the command line, sets up logging, builds the device and serves it;
//! `vfio-user-scsi ctl ...` is the control socket's client.

use std::ffi::CString;
use std::path::Path;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use block::{BlockError, Disk, Engine, IoRequest, IoUringEngine, SyncEngine, ThreadPoolEngine};
use clap::Parser;
use slog::{debug, error, info, warn, Logger};
use virtio::EngineFactory;
use vm_memory::GuestMemoryMmap;

use server::cli::{Aio, Cli, LogFormat};
use server::control_commands::ControlCommands;
use server::controller::{self, ControllerConfig, ControllerError, QueueServing};
use server::iothread_pool::IothreadPool;
use server::logging::{self, LogControl};
use server::mapping::{self, MappingError};
use server::operator::{Operator, OperatorError};
use server::shutdown_deadline::{self, LogGuard, ShutdownDeadline};
use server::shutdown_progress::{ShutdownProgress, ShutdownStep};
use server::{ctl, sd_notify, signals};
use vfio_user_server::{
    activated_listener, DmaMemory, Listener, Server, ServerError, SocketAccess, SocketPathError,
};

#[derive(Debug, thiserror::Error)]
enum MainError {
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error(transparent)]
    SocketActivation(#[from] SocketPathError),
    #[error("--socket {0}")]
    Socket(SocketPathError),
    #[error(transparent)]
    Controller(#[from] ControllerError),
    #[error(transparent)]
    Mapping(#[from] MappingError),
    #[error(transparent)]
    Operator(#[from] OperatorError),
    #[error("--socket-owner '{spec}': {problem}")]
    SocketOwner {
        spec: String,
        problem: SocketOwnerProblem,
    },
    #[error("cannot start the iothreads: {0}")]
    Iothreads(std::io::Error),
    #[error("cannot start the shutdown watchdog: {0}")]
    ShutdownDeadline(std::io::Error),
    #[error("{disks} disk(s) could not be flushed at exit: acknowledged writes may be lost")]
    Unflushed { disks: usize },
}

impl MainError {
    /// 2 for a mistake on the command line, as clap's own errors; 1 for anything else.
    fn exit_code(&self) -> u8 {
        match self {
            MainError::Mapping(_)
            | MainError::SocketOwner { .. }
            | MainError::Controller(ControllerError::Luns(_)) => 2,
            _ => 1,
        }
    }
}

/// Threads per request queue with `--aio threads`: enough to keep a few requests of a queue
/// at the disk at once without a thread per descriptor.
const AIO_THREADS_PER_QUEUE: usize = 4;

/// The engine factory `--aio` asks for, or the synchronous one where io_uring is refused.
fn engines(aio: Aio, queue_size: u16, log: &Logger) -> EngineFactory {
    let depth = u32::from(queue_size);
    let sync: EngineFactory = Arc::new(|| Ok(Box::new(SyncEngine::new()?)));
    match aio {
        Aio::Sync => {
            info!(log, "I/O engine"; "aio" => "sync");
            sync
        }
        Aio::Threads => {
            info!(log, "I/O engine"; "aio" => "threads", "threads_per_queue" => AIO_THREADS_PER_QUEUE);
            Arc::new(|| Ok(Box::new(ThreadPoolEngine::new(AIO_THREADS_PER_QUEUE)?)))
        }
        Aio::IoUring => match IoUringEngine::new(depth) {
            Ok(_) => {
                info!(log, "I/O engine"; "aio" => "io_uring", "depth" => depth);
                Arc::new(move || Ok(Box::new(IoUringEngine::new(depth)?)))
            }
            Err(e) => {
                warn!(log, "io_uring unavailable, falling back to blocking I/O";
                    "aio" => "sync", "error" => %e);
                sync
            }
        },
    }
}

/// Every DMA map file and IRQ eventfd of a client is a descriptor, and QEMU sends hundreds: the
/// soft limit goes up to the hard one, as systemd services and QEMU itself do.
fn raise_open_file_limit(log: &Logger) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit, which `limit` is.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        warn!(log, "cannot read the open file limit"; "error" => %std::io::Error::last_os_error());
        return;
    }
    if limit.rlim_cur >= limit.rlim_max {
        return;
    }
    let raised = libc::rlimit {
        rlim_cur: limit.rlim_max,
        rlim_max: limit.rlim_max,
    };
    // SAFETY: setrlimit reads one rlimit, which `raised` is.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
        warn!(log, "cannot raise the open file limit"; "limit" => limit.rlim_cur,
            "error" => %std::io::Error::last_os_error());
        return;
    }
    debug!(log, "open file limit raised"; "from" => limit.rlim_cur, "to" => raised.rlim_cur);
}

/// Why `--socket-owner` names no owner.
#[derive(Debug, thiserror::Error)]
enum SocketOwnerProblem {
    #[error("no user '{user}' (a name, or a number)")]
    UnknownUser { user: String },
    #[error("no group '{group}' (a name, or a number)")]
    UnknownGroup { group: String },
    #[error("user {uid} has no passwd entry to take a group from (give USER:GROUP)")]
    UserWithoutGroup { uid: libc::uid_t },
}

/// `USER[:GROUP]`, by name or number; without a group, the user's own.
fn socket_owner(spec: &str) -> Result<(libc::uid_t, libc::gid_t), MainError> {
    let error = |problem| MainError::SocketOwner {
        spec: spec.to_string(),
        problem,
    };
    let (user, group) = match spec.split_once(':') {
        Some((user, group)) => (user, Some(group)),
        None => (spec, None),
    };
    let no_user = || {
        error(SocketOwnerProblem::UnknownUser {
            user: user.to_string(),
        })
    };
    let name = CString::new(user).map_err(|_| no_user())?;
    // SAFETY: getpwnam reads a NUL-terminated name; the result is read before any other
    // passwd lookup could reuse its storage (start-up is single-threaded here).
    let passwd = unsafe { libc::getpwnam(name.as_ptr()) };
    let (uid, user_gid) = if passwd.is_null() {
        let uid = user.parse().map_err(|_| no_user())?;
        (uid, None)
    } else {
        // SAFETY: non-null, points to the static passwd entry just returned.
        unsafe { ((*passwd).pw_uid, Some((*passwd).pw_gid)) }
    };
    let gid = match group {
        None => user_gid.ok_or_else(|| error(SocketOwnerProblem::UserWithoutGroup { uid }))?,
        Some(group) => {
            let no_group = || {
                error(SocketOwnerProblem::UnknownGroup {
                    group: group.to_string(),
                })
            };
            let name = CString::new(group).map_err(|_| no_group())?;
            // SAFETY: as for getpwnam.
            let entry = unsafe { libc::getgrnam(name.as_ptr()) };
            if entry.is_null() {
                group.parse().map_err(|_| no_group())?
            } else {
                // SAFETY: non-null, points to the static group entry just returned.
                unsafe { (*entry).gr_gid }
            }
        }
    };
    Ok((uid, gid))
}

fn run(
    cli: &Cli,
    log: &Logger,
    log_control: LogControl,
    log_guard: LogGuard,
) -> Result<(), MainError> {
    // Everything the command line can get wrong is checked before anything is created.
    let queue_mapping = mapping::build_mapping(
        &cli.iothreads,
        cli.iothread_vq_mapping.as_deref(),
        usize::from(cli.num_queues),
    )?;
    server::disk_spec::assign_luns(&cli.disks)
        .map_err(|e| MainError::Controller(ControllerError::Luns(e)))?;
    let access = SocketAccess {
        mode: cli.socket_mode,
        owner: cli.socket_owner.as_deref().map(socket_owner).transpose()?,
    };
    // A stop signal must find its handler from the moment a client can connect.
    let signals = signals::install().map_err(|e| MainError::Operator(OperatorError::Signals(e)))?;
    // The socket before the disks: a second server on a live socket must not touch images.
    // A socket systemd handed over is systemd's to remove.
    let (listener, own_socket) = match activated_listener()? {
        Some(listener) => (Listener::inherited(listener), None),
        None => (
            Listener::bind(&cli.socket, &access).map_err(MainError::Socket)?,
            Some(cli.socket.clone()),
        ),
    };
    let pool = Arc::new(
        IothreadPool::start(&cli.iothreads, queue_mapping, cli.poll_max_ns, log)
            .map_err(MainError::Iothreads)?,
    );
    let memory = DmaMemory::new(GuestMemoryMmap::new());
    let config = ControllerConfig {
        disks: &cli.disks,
        num_queues: cli.num_queues,
        queue_size: cli.queue_size,
        serving: QueueServing {
            pool: Arc::clone(&pool),
            engines: engines(cli.aio, cli.queue_size, log),
        },
    };
    let controller::Controller {
        function,
        temporary_disk,
    } = controller::build(&config, memory.clone(), log)?;
    let commands = ControlCommands::new(
        Arc::clone(&pool),
        log_control.clone(),
        cli.num_queues,
        cli.queue_size,
        log.clone(),
    );
    let progress = ShutdownProgress::default();
    let mut operator = Operator::new(
        signals,
        cli.control_socket.as_deref(),
        &access,
        commands,
        log_control,
        progress.clone(),
        log.clone(),
    )?;
    let device = function.function().device();
    let in_flight = device.in_flight_probe();
    let disks = device.disks_probe();
    let server = Server::with_listener(listener, function, memory, log.clone())?;
    ShutdownDeadline {
        timeout: Duration::from_secs(cli.shutdown_timeout),
        socket: own_socket,
        in_flight: Box::new(in_flight),
        progress: progress.clone(),
        log: log.clone(),
        log_guard,
    }
    .arm()
    .map_err(MainError::ShutdownDeadline)?;
    match sd_notify::notify_ready() {
        Ok(true) => info!(log, "told systemd we are ready"),
        Ok(false) => {}
        Err(e) => warn!(log, "sd_notify failed"; "error" => %e),
    }
    let served = server.run_with(Some(&mut operator));

    // Each step that can block gets its name before it starts: `progress` is what the
    // shutdown watchdog reports if the deadline passes.
    progress.enter(ShutdownStep::StoppingIothreads, log);
    drop(operator);
    drop(config);
    // The last handle on the pool (the device's went with the server): joins the iothreads.
    drop(pool);
    // The temporary disk is memory that goes with the process: nothing to make durable.
    let memory_disk = temporary_disk.as_ref().map(|disk| disk.path.as_path());
    let unflushed = flush_disks_at_exit(disks(), memory_disk, &progress, log);
    progress.enter(ShutdownStep::ClosingDisks, log);
    drop(disks);
    drop(temporary_disk);
    progress.finish(log);
    served?;
    if unflushed > 0 {
        return Err(MainError::Unflushed { disks: unflushed });
    }
    Ok(())
}

/// Flushes each writable disk but `memory_disk`, one shutdown step each, and logs how each
/// went; returns how many failed.
fn flush_disks_at_exit(
    disks: Vec<(u16, Arc<Disk>)>,
    memory_disk: Option<&Path>,
    progress: &ShutdownProgress,
    log: &Logger,
) -> usize {
    let mut unflushed = 0;
    for (lun, disk) in disks {
        let Some(path) = disk
            .path()
            .filter(|path| !disk.read_only() && Some(*path) != memory_disk)
        else {
            continue;
        };
        let path = path.to_path_buf();
        let started = Instant::now();
        progress.enter(
            ShutdownStep::FlushingDisk {
                lun,
                path: path.clone(),
            },
            log,
        );
        match flush_at_exit(&disk) {
            Ok(()) => info!(log, "disk flushed"; "lun" => lun, "path" => %path.display(),
                "ms" => started.elapsed().as_millis()),
            Err(e) => {
                warn!(log, "disk flush failed at exit, acknowledged writes may be lost";
                    "lun" => lun, "path" => %path.display(), "error" => %e);
                unflushed += 1;
            }
        }
    }
    unflushed
}

/// Why a disk's flush at exit failed.
#[derive(Debug, thiserror::Error)]
enum ExitFlushError {
    #[error(transparent)]
    Engine(#[from] BlockError),
    #[error(transparent)]
    Flush(std::io::Error),
}

/// Makes the writes acknowledged to the guest durable before the process ends, through the
/// flush a guest's SYNCHRONIZE CACHE takes (so a disk whose flush failed before fails this one
/// too, without trying). The shutdown watchdog bounds it.
fn flush_at_exit(disk: &Arc<Disk>) -> Result<(), ExitFlushError> {
    let mut engine = SyncEngine::new()?;
    engine.submit(disk, IoRequest::Flush, 0)?;
    let mut done = Vec::with_capacity(1);
    engine.reap(&mut done);
    match done.iter().find_map(|completion| completion.result.err()) {
        Some(errno) => Err(ExitFlushError::Flush(std::io::Error::from_raw_os_error(
            errno,
        ))),
        None => Ok(()),
    }
}

fn main() -> ExitCode {
    let mut args = std::env::args_os();
    if std::env::args_os().nth(1).is_some_and(|arg| arg == "ctl") {
        let program = args.next().unwrap_or_default();
        let mut rest: Vec<_> = args.skip(1).collect();
        let mut name = program;
        name.push(" ctl");
        rest.insert(0, name);
        return ctl::main(rest);
    }
    // Before any thread starts, so that every thread but the shutdown watchdog inherits it.
    if let Err(e) = shutdown_deadline::block_handled_signals() {
        eprintln!("vfio-user-scsi: cannot block signals: {e}");
        return ExitCode::FAILURE;
    }
    let cli = Cli::parse();
    let (log, log_control, flush_on_exit) =
        match logging::build(cli.log_format, cli.log_level, cli.log_file.as_deref()) {
            Ok(logging) => logging,
            Err(e) => {
                eprintln!("vfio-user-scsi: {e}");
                return ExitCode::FAILURE;
            }
        };
    raise_open_file_limit(&log);
    // A client that shrinks its mapped memory must fail its queue, not kill the server.
    if let Err(e) = virtio::memory_fault::install_handler() {
        warn!(log, "no SIGBUS guard for guest memory"; "error" => %e);
    }
    let log_guard: LogGuard = Arc::new(Mutex::new(Some(flush_on_exit)));
    let status = match run(&cli, &log, log_control, Arc::clone(&log_guard)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(log, "exiting"; "error" => %e);
            // A JSON log on stderr already carries the error; a plain line would break readers.
            if cli.log_format != LogFormat::Json || cli.log_file.is_some() {
                eprintln!("vfio-user-scsi: {e}");
            }
            ExitCode::from(e.exit_code())
        }
    };
    // Flushes the log before the process ends.
    drop(
        log_guard
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take(),
    );
    status
}
