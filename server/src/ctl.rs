//! `vfio-user-scsi ctl PATH COMMAND [ARGS]`: sends one request to a server's control socket and
//! prints the JSON reply, so that shell scripts need no socat. Exit status: 0 when the server
//! answered ok, 1 when it answered with an error or could not be reached, 2 for a usage mistake.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde_json::{json, Value};

/// How long the client waits for the reply (remove-disk may wait for a LUN to drain).
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// Talks to a running vfio-user-scsi through its --control-socket.
#[derive(Debug, Parser)]
#[command(name = "vfio-user-scsi ctl", version = crate::cli::VERSION)]
pub struct CtlCli {
    /// The server's --control-socket.
    pub socket: PathBuf,
    #[command(subcommand)]
    pub command: CtlCommand,
}

#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// The device, the client, queues and their iothreads, iothreads, LUNs, the log.
    Query,
    /// Counters per request queue (requests, bytes, errors by sense key, in flight, kicks,
    /// interrupts, latency) since the start, per LUN (the same without kicks and interrupts)
    /// since it was added, and per iothread (busy, poll, sleep time).
    Stats,
    /// Adds a LUN while the guest runs; SPEC is a --disk spec (path=FILE,... or null,size=...).
    AddDisk { spec: String },
    /// Removes a LUN: replies once its requests in flight have completed, or after 5 s with an
    /// error naming them (run it again to finish the removal).
    RemoveDisk { lun: u16 },
    /// Takes the backing file's new size (grow the file first), or gives a null disk SIZE.
    Resize { lun: u16, size: Option<String> },
    /// Resumes LUNs that werror=/rerror= paused (all of them, or LUN): their held requests
    /// are resubmitted in order. Make room or repair the storage first.
    Cont { lun: Option<u16> },
    /// error, warn, info, debug or trace.
    SetLogLevel { level: String },
    /// Moves queues between iothreads while the guest runs; JSON as for --iothread-vq-mapping.
    SetMapping { json: String },
    /// Starts an iothread (queues reach it through set-mapping).
    AddIothread { name: String },
    /// Stops an iothread that serves no queue.
    RemoveIothread { name: String },
}

impl CtlCommand {
    fn request(&self) -> Value {
        match self {
            CtlCommand::Query => json!({"command": "query"}),
            CtlCommand::Stats => json!({"command": "stats"}),
            CtlCommand::AddDisk { spec } => json!({"command": "add-disk", "spec": spec}),
            CtlCommand::RemoveDisk { lun } => json!({"command": "remove-disk", "lun": lun}),
            CtlCommand::Resize { lun, size } => match size {
                Some(size) => json!({"command": "resize", "lun": lun, "size": size}),
                None => json!({"command": "resize", "lun": lun}),
            },
            CtlCommand::Cont { lun } => match lun {
                Some(lun) => json!({"command": "cont", "lun": lun}),
                None => json!({"command": "cont"}),
            },
            CtlCommand::SetLogLevel { level } => {
                json!({"command": "set-log-level", "level": level})
            }
            CtlCommand::SetMapping { json } => json!({"command": "set-mapping", "mapping": json}),
            CtlCommand::AddIothread { name } => json!({"command": "add-iothread", "name": name}),
            CtlCommand::RemoveIothread { name } => {
                json!({"command": "remove-iothread", "name": name})
            }
        }
    }
}

/// Runs the client with the arguments after `ctl`.
pub fn main(args: impl IntoIterator<Item = std::ffi::OsString>) -> ExitCode {
    let cli = match CtlCli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    match exchange(&cli) {
        Ok(reply) => {
            println!("{reply}");
            let ok = serde_json::from_str::<Value>(&reply)
                .ok()
                .and_then(|value| value.get("ok").and_then(Value::as_bool))
                .unwrap_or(false);
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("vfio-user-scsi ctl: {}: {e}", cli.socket.display());
            ExitCode::FAILURE
        }
    }
}

fn exchange(cli: &CtlCli) -> std::io::Result<String> {
    let mut stream = UnixStream::connect(&cli.socket)?;
    stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
    let mut line = cli.command.request().to_string();
    line.push('\n');
    stream.write_all(line.as_bytes())?;
    let mut reply = String::new();
    BufReader::new(stream).read_line(&mut reply)?;
    if reply.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the server closed the connection without a reply",
        ));
    }
    Ok(reply.trim_end().to_string())
}
