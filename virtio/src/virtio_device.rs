//! The contract between the virtio-pci transport and a virtio device behind it.
//!
//! The transport owns the registers (features, status, queue configuration, MSI-X vector
//! numbers); the device owns what the queues carry. When the driver sets DRIVER_OK, the transport
//! hands the device its configured queues; after that the device processes them until reset.

use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use crate::scsi_device::QueueStats;

/// Guest memory as the DMA maps define it.
pub type GuestMemory = GuestMemoryAtomic<GuestMemoryMmap>;

/// Raises one interrupt (an MSI-X vector, or nothing when the driver assigned NO_VECTOR).
pub trait Interrupt: Send + Sync {
    fn trigger(&self);
}

/// A queue the driver enabled, ready to process.
pub struct ActiveQueue {
    /// Virtqueue index (for virtio-scsi: 0 control, 1 event, 2.. request queues).
    pub index: u16,
    pub queue: Queue,
    /// Written on every driver notification for this queue.
    pub notifier: Arc<EventFd>,
    pub interrupt: Arc<dyn Interrupt>,
}

/// What the device receives on DRIVER_OK.
pub struct Activation {
    pub memory: GuestMemory,
    /// Features the driver accepted.
    pub acked_features: u64,
    /// Enabled queues only, in index order.
    pub queues: Vec<ActiveQueue>,
    /// The configuration-change interrupt.
    pub config_interrupt: Arc<dyn Interrupt>,
}

#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("queue {index} does not exist (the device has {count})")]
    NoSuchQueue { index: u16, count: u16 },
    #[error("cannot create the eventfd that tells TMFs a task left: {0}")]
    TaskEventfd(#[source] std::io::Error),
    #[error("cannot start a request queue's I/O engine: {0}")]
    Engine(#[source] block::BlockError),
}

/// A virtio device type served through the virtio-pci transport.
pub trait VirtioDevice: Send {
    /// Virtio device ID (8 for SCSI).
    fn device_type(&self) -> u32;
    /// Number of virtqueues.
    fn queue_count(&self) -> u16;
    /// Largest queue size the driver may choose (a power of two).
    fn max_queue_size(&self) -> u16;
    /// Device-specific and transport feature bits the device offers (VERSION_1 included).
    fn features(&self) -> u64;
    /// Size of the device-specific configuration structure.
    fn config_size(&self) -> usize;
    fn read_config(&self, offset: u64, data: &mut [u8]);
    fn write_config(&mut self, offset: u64, data: &[u8]);
    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError>;
    /// Guest memory that can shrink under the device is about to be mapped (see
    /// `memory_fault`); no queue is being served while this is called.
    fn memory_may_shrink(&mut self) {}
    /// The device found a queue it cannot go on with (the transport reports DEVICE_NEEDS_RESET).
    fn needs_reset(&self) -> bool {
        false
    }
    /// The counters of each request queue since the device was built.
    fn queue_stats(&self) -> Vec<QueueStats> {
        Vec::new()
    }
    /// Stop all processing and forget the queues; in-flight requests complete or are cancelled
    /// before this returns. Device state goes back to power-on (pending unit attentions etc.).
    fn reset(&mut self);
}
