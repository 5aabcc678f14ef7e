//! `vfio-user-scsi`: parses the command line, sets up logging, builds the device and serves it.

use std::process::ExitCode;

use clap::Parser;
use slog::{error, Logger};
use vm_memory::GuestMemoryMmap;

use server::cli::Cli;
use server::controller::{self, ControllerConfig, ControllerError};
use server::mapping::{self, MappingError, QueueOwner};
use server::{logging, DmaMemory, Server, ServerError};

#[derive(Debug, thiserror::Error)]
enum MainError {
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error(transparent)]
    Controller(#[from] ControllerError),
    #[error(transparent)]
    Mapping(#[from] MappingError),
    #[error("--iothread {0}: iothreads are not served yet; without --iothread every queue runs on the main loop")]
    IothreadsUnsupported(String),
}

fn run(cli: &Cli, log: &Logger) -> Result<(), MainError> {
    // Everything the command line can get wrong is checked before the socket exists.
    let queue_mapping = mapping::build_mapping(
        &cli.iothreads,
        cli.iothread_vq_mapping.as_deref(),
        usize::from(cli.num_queues),
    )?;
    let served_by_iothread = [queue_mapping.ctrl, queue_mapping.event]
        .into_iter()
        .chain(queue_mapping.request.iter().copied())
        .find_map(|owner| match owner {
            QueueOwner::Iothread(i) => cli.iothreads.get(i).cloned(),
            QueueOwner::MainLoop => None,
        });
    if let Some(name) = served_by_iothread {
        return Err(MainError::IothreadsUnsupported(name));
    }
    let memory = DmaMemory::new(GuestMemoryMmap::new());
    let config = ControllerConfig {
        disks: &cli.disks,
        num_queues: cli.num_queues,
        queue_size: cli.queue_size,
    };
    let controller = controller::build(&config, memory.clone(), log)?;
    Server::new(&cli.socket, controller.function, memory, log.clone())?.run()?;
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (log, _flush_on_exit) =
        match logging::build(cli.log_format, cli.log_level, cli.log_file.as_deref()) {
            Ok(logging) => logging,
            Err(e) => {
                eprintln!("vfio-user-scsi: cannot open the log: {e}");
                return ExitCode::FAILURE;
            }
        };
    match run(&cli, &log) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(log, "exiting"; "error" => %e);
            eprintln!("vfio-user-scsi: {e}");
            ExitCode::FAILURE
        }
    }
}
