//! `vfio-user-scsi`: parses the command line, sets up logging, builds the device and serves it.

use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use block::{IoUringEngine, SyncEngine, ThreadPoolEngine};
use clap::Parser;
use slog::{error, info, warn, Logger};
use virtio::EngineFactory;
use vm_memory::GuestMemoryMmap;

use server::cli::{Aio, Cli};
use server::controller::{self, ControllerConfig, ControllerError, QueueServing};
use server::iothread_pool::IothreadPool;
use server::logging;
use server::mapping::{self, MappingError};
use server::shutdown_deadline::{self, LogGuard, ShutdownDeadline};
use vfio_user_server::{DmaMemory, Server, ServerError};

#[derive(Debug, thiserror::Error)]
enum MainError {
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error(transparent)]
    Controller(#[from] ControllerError),
    #[error(transparent)]
    Mapping(#[from] MappingError),
    #[error("cannot start the iothreads: {0}")]
    Iothreads(std::io::Error),
    #[error("cannot start the shutdown watchdog: {0}")]
    ShutdownDeadline(std::io::Error),
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

fn run(cli: &Cli, log: &Logger, log_guard: LogGuard) -> Result<(), MainError> {
    // Everything the command line can get wrong is checked before the socket exists.
    let queue_mapping = mapping::build_mapping(
        &cli.iothreads,
        cli.iothread_vq_mapping.as_deref(),
        usize::from(cli.num_queues),
    )?;
    let pool = IothreadPool::start(&cli.iothreads, queue_mapping, cli.poll_max_ns, log)
        .map_err(MainError::Iothreads)?;
    let memory = DmaMemory::new(GuestMemoryMmap::new());
    let config = ControllerConfig {
        disks: &cli.disks,
        num_queues: cli.num_queues,
        queue_size: cli.queue_size,
        serving: Some(QueueServing {
            pool: Arc::new(pool),
            engines: engines(cli.aio, cli.queue_size, log),
        }),
    };
    let controller = controller::build(&config, memory.clone(), log)?;
    let in_flight = controller.function.function().device().in_flight_probe();
    let server = Server::new(&cli.socket, controller.function, memory, log.clone())?;
    ShutdownDeadline {
        timeout: Duration::from_secs(cli.shutdown_timeout),
        socket: cli.socket.clone(),
        in_flight: Box::new(in_flight),
        log: log.clone(),
        log_guard,
    }
    .arm()
    .map_err(MainError::ShutdownDeadline)?;
    server.run()?;
    Ok(())
}

fn main() -> ExitCode {
    // Before any thread starts, so that every thread but the shutdown watchdog inherits it.
    if let Err(e) = shutdown_deadline::block_handled_signals() {
        eprintln!("vfio-user-scsi: cannot block signals: {e}");
        return ExitCode::FAILURE;
    }
    let cli = Cli::parse();
    let (log, flush_on_exit) =
        match logging::build(cli.log_format, cli.log_level, cli.log_file.as_deref()) {
            Ok(logging) => logging,
            Err(e) => {
                eprintln!("vfio-user-scsi: cannot open the log: {e}");
                return ExitCode::FAILURE;
            }
        };
    let log_guard: LogGuard = Arc::new(Mutex::new(Some(flush_on_exit)));
    let status = match run(&cli, &log, Arc::clone(&log_guard)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(log, "exiting"; "error" => %e);
            eprintln!("vfio-user-scsi: {e}");
            ExitCode::FAILURE
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
