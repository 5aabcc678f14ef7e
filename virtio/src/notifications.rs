//! Queue notifiers: one eventfd per queue that a driver's notify write signals, created once and
//! kept across resets so it can be handed out (GET_REGION_IO_FDS) and watched for the life of the
//! function.

use std::io::{self, ErrorKind};
use std::sync::Arc;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

#[derive(Debug)]
pub struct QueueNotifiers {
    fds: Vec<Arc<EventFd>>,
}

impl QueueNotifiers {
    pub fn new(queue_count: u16) -> io::Result<Self> {
        let fds = (0..queue_count)
            .map(|_| EventFd::new(EFD_NONBLOCK).map(Arc::new))
            .collect::<io::Result<_>>()?;
        Ok(QueueNotifiers { fds })
    }

    pub fn get(&self, queue: u16) -> Option<&Arc<EventFd>> {
        self.fds.get(usize::from(queue))
    }

    /// Forgets notifications that were not consumed (the count is not needed, only readiness).
    pub fn drain(&self, queue: u16) -> io::Result<()> {
        if let Some(fd) = self.get(queue) {
            match fd.read() {
                Err(e) if e.kind() != ErrorKind::WouldBlock => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }

    pub fn drain_all(&self) -> io::Result<()> {
        (0..self.fds.len() as u16).try_for_each(|queue| self.drain(queue))
    }
}

impl QueueNotifiers {
    /// What a driver write to the queue's notify address does.
    pub fn notify(&self, queue: u16) -> io::Result<()> {
        match self.get(queue) {
            Some(fd) => match fd.write(1) {
                // The counter is saturated: the queue is already marked as notified.
                Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(()),
                other => other,
            },
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_then_drain() {
        let notifiers = QueueNotifiers::new(2).unwrap();
        notifiers.notify(1).unwrap();
        notifiers.notify(1).unwrap();
        assert_eq!(notifiers.get(1).unwrap().read().unwrap(), 2);
        notifiers.notify(0).unwrap();
        notifiers.drain_all().unwrap();
        assert!(notifiers.get(0).unwrap().read().is_err());
        assert!(notifiers.get(2).is_none());
    }
}
