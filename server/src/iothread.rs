//! One iothread: a named thread with its own mio `Poll` serving the queues handed to it, and a
//! control channel (a channel plus a mio `Waker`) through which the main loop hands queues over,
//! pauses it, takes its queues back and stops it.

use std::io;
use std::sync::mpsc::{channel, Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::Waker;
use slog::{debug, error, Logger};
use virtio::QueueWorker;

use crate::poll_window::PollWindow;
use crate::queue_set::{thread_name, QueueSet, OWNER_TOKEN};

enum Command {
    Adopt(Box<dyn QueueWorker>),
    /// Complete the requests in flight, acknowledge, then touch no queue until `Resume`.
    Pause(Sender<()>),
    Resume,
    /// Complete the requests in flight, drop every queue, acknowledge.
    Release(Sender<()>),
    Shutdown,
}

pub struct Iothread {
    name: String,
    commands: Sender<Command>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
}

impl Iothread {
    /// Starts a thread called `name` (as /proc/<pid>/task/*/comm shows it, cut to 15 bytes)
    /// that polls busy queues for up to `poll_max_ns` before it sleeps (0: never polls).
    pub fn spawn(name: &str, poll_max_ns: u64, log: &Logger) -> io::Result<Iothread> {
        let set = QueueSet::new(log)?;
        let waker = Arc::new(Waker::new(set.registry(), OWNER_TOKEN)?);
        let (commands, receiver) = channel();
        let thread_log = log.clone();
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || run(set, receiver, PollWindow::new(poll_max_ns), &thread_log))?;
        debug!(log, "iothread started"; "iothread" => name);
        Ok(Iothread {
            name: name.to_string(),
            commands,
            waker,
            thread: Some(thread),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sends a command; false when the thread is gone.
    fn send(&self, command: Command) -> bool {
        self.commands.send(command).is_ok() && self.waker.wake().is_ok()
    }

    pub fn adopt(&self, worker: Box<dyn QueueWorker>) {
        self.send(Command::Adopt(worker));
    }

    /// Asks for a pause; `wait` on the result returns once the thread has stopped.
    pub fn pause(&self) -> Acknowledgement {
        let (ack, done) = channel();
        Acknowledgement(self.send(Command::Pause(ack)).then_some(done))
    }

    pub fn resume(&self) {
        self.send(Command::Resume);
    }

    /// Asks for the queues back; `wait` on the result returns once they are dropped.
    pub fn release(&self) -> Acknowledgement {
        let (ack, done) = channel();
        Acknowledgement(self.send(Command::Release(ack)).then_some(done))
    }
}

/// The answer to a command that the main loop waits for.
pub struct Acknowledgement(Option<Receiver<()>>);

impl Acknowledgement {
    /// Blocks until the iothread acknowledged (or is gone, which has the same effect).
    pub fn wait(self) {
        if let Some(done) = self.0 {
            let _ = done.recv();
        }
    }
}

impl Drop for Iothread {
    fn drop(&mut self) {
        self.send(Command::Shutdown);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(mut set: QueueSet, commands: Receiver<Command>, mut window: PollWindow, log: &Logger) {
    loop {
        let started = Instant::now();
        let polling = window.current();
        let found_work = !polling.is_zero() && !set.is_empty() && set.poll_queues(polling);
        // Notifications stay off while polling finds work: look at the other events, then
        // poll again rather than sleep.
        let timeout = found_work.then_some(Duration::ZERO);
        let result = set.poll(timeout);
        window.adjust(started.elapsed());
        match result {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                error!(log, "iothread poll failed"; "iothread" => thread_name(), "error" => %e);
                return;
            }
        }
        // The waker may have fired during a drain and been consumed: always look.
        loop {
            match commands.try_recv() {
                Ok(command) => {
                    if !execute(&mut set, command, &commands, log) {
                        return;
                    }
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return,
            }
        }
    }
}

/// Carries out one command; false when the thread must stop.
fn execute(
    set: &mut QueueSet,
    command: Command,
    commands: &Receiver<Command>,
    log: &Logger,
) -> bool {
    match command {
        Command::Adopt(worker) => {
            adopt(set, worker, log);
            true
        }
        Command::Pause(ack) => {
            set.drain();
            let _ = ack.send(());
            debug!(log, "iothread paused"; "iothread" => thread_name(), "queues" => set.len());
            paused(set, commands, log)
        }
        Command::Resume => true,
        Command::Release(ack) => {
            set.release();
            let _ = ack.send(());
            true
        }
        Command::Shutdown => {
            set.release();
            false
        }
    }
}

fn adopt(set: &mut QueueSet, worker: Box<dyn QueueWorker>, log: &Logger) {
    let queue = worker.queue_index();
    if let Err(e) = set.adopt(worker) {
        error!(log, "cannot watch queue"; "iothread" => thread_name(), "vq" => queue, "error" => %e);
    }
}

/// Waits for the end of a pause without touching the queues; false when the thread must stop.
fn paused(set: &mut QueueSet, commands: &Receiver<Command>, log: &Logger) -> bool {
    loop {
        match commands.recv() {
            Ok(Command::Resume) => {
                debug!(log, "iothread resumed"; "iothread" => thread_name());
                set.kick_all();
                return true;
            }
            // Already paused: nothing is in flight.
            Ok(Command::Pause(ack)) => {
                let _ = ack.send(());
            }
            Ok(Command::Adopt(worker)) => adopt(set, worker, log),
            Ok(Command::Release(ack)) => {
                set.release();
                let _ = ack.send(());
                return true;
            }
            Ok(Command::Shutdown) | Err(_) => {
                set.release();
                return false;
            }
        }
    }
}
