//! Notifications between driver and device (virtio 1.2 §2.3), as the PCI transport carries
//! them:
//! - driver to device: a notify write to a queue's notify address writes that queue's notifier
//!   eventfd, created once and kept across resets, so that it can be handed out
//!   (GET_REGION_IO_FDS) and watched by the queue's owner for the life of the function;
//! - device to driver: an interrupt raises the MSI-X vector the driver assigned, or, with
//!   NO_VECTOR, only the read-to-clear ISR status byte; configuration changes and
//!   DEVICE_NEEDS_RESET raise the configuration vector.

use std::io::{self, ErrorKind};
use std::sync::atomic::{AtomicU16, AtomicU8, Ordering};
use std::sync::Arc;

use pci::MsixVectors;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::status::DEVICE_NEEDS_RESET;
use crate::virtio_device::Interrupt;

/// The notifier eventfd of every queue.
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

/// ISR status bits.
pub const QUEUE_INTERRUPT: u8 = 1;
pub const CONFIG_INTERRUPT: u8 = 2;

/// The ISR status byte: read-to-clear, set by interrupts (mostly unused with MSI-X).
#[derive(Debug, Default)]
pub struct Isr(AtomicU8);

impl Isr {
    pub fn raise(&self, bits: u8) {
        self.0.fetch_or(bits, Ordering::SeqCst);
    }

    /// What the driver reads: the bits, cleared by the read.
    pub fn take(&self) -> u8 {
        self.0.swap(0, Ordering::SeqCst)
    }

    pub fn clear(&self) {
        self.0.store(0, Ordering::SeqCst);
    }
}

/// The vector number meaning "no interrupt" (virtio 1.2, 4.1.5.1.2).
pub const NO_VECTOR: u16 = 0xffff;

/// Raises the MSI-X vector currently assigned to a queue or to configuration changes.
pub struct MsixInterrupt {
    vectors: Arc<MsixVectors>,
    vector: Arc<AtomicU16>,
    isr: Arc<Isr>,
    isr_bit: u8,
}

impl MsixInterrupt {
    pub fn new(
        vectors: Arc<MsixVectors>,
        vector: Arc<AtomicU16>,
        isr: Arc<Isr>,
        isr_bit: u8,
    ) -> Self {
        MsixInterrupt {
            vectors,
            vector,
            isr,
            isr_bit,
        }
    }
}

impl Interrupt for MsixInterrupt {
    fn trigger(&self) {
        let vector = self.vector.load(Ordering::Acquire);
        if vector == NO_VECTOR {
            // No MSI-X message: the ISR bit is all the driver can find (by polling).
            self.isr.raise(self.isr_bit);
            return;
        }
        if self.isr_bit == CONFIG_INTERRUPT {
            self.isr.raise(self.isr_bit);
        }
        // The register only ever holds NO_VECTOR or a vector that exists, and an eventfd write
        // can only fail on a closed descriptor, which the client replaces with SET_IRQS.
        let _ = self.vectors.signal(vector);
    }
}

/// Device-side changes the driver must hear about: configuration changes and
/// DEVICE_NEEDS_RESET. A handle any thread may hold.
pub struct ConfigNotifier {
    pub(crate) status: Arc<AtomicU8>,
    pub(crate) generation: Arc<AtomicU8>,
    pub(crate) interrupt: MsixInterrupt,
}

impl ConfigNotifier {
    /// The device configuration changed: bump config_generation and raise the config vector.
    pub fn config_changed(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.interrupt.trigger();
    }

    /// The device cannot go on until the driver resets it.
    pub fn needs_reset(&self) {
        self.status.fetch_or(DEVICE_NEEDS_RESET, Ordering::SeqCst);
        self.interrupt.trigger();
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

    #[test]
    fn reading_clears() {
        let isr = Isr::default();
        isr.raise(CONFIG_INTERRUPT);
        isr.raise(QUEUE_INTERRUPT);
        assert_eq!(isr.take(), 3);
        assert_eq!(isr.take(), 0);
    }
}
