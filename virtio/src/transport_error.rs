//! Errors of accesses to the virtio-pci function and of building it.

use std::io;

use crate::virtio_device::ActivateError;

/// Where an access went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Region {
    Config,
    Bar(u8),
}

impl std::fmt::Display for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Region::Config => write!(f, "config space"),
            Region::Bar(index) => write!(f, "BAR{index}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("the function has no BAR{0}")]
    NoSuchBar(u8),
    #[error("{region} has no register for a {len}-byte access at {offset:#x}")]
    Unmapped {
        region: Region,
        offset: u64,
        len: usize,
    },
    #[error("{region}: {source}")]
    Pci {
        region: Region,
        source: pci::PciError,
    },
    #[error("notifier eventfd of queue {queue}: {source}")]
    Notifier { queue: u16, source: io::Error },
    #[error("the device declares {0} queues; a virtio-pci function serves 1 to 2047")]
    QueueCount(u16),
    #[error("the device's maximum queue size {0} is not a power of two within 1..=32768")]
    QueueSize(u16),
    #[error("virtio device type {0} has no modern PCI device ID")]
    DeviceType(u32),
    #[error("setting up the function: {0}")]
    Setup(pci::PciError),
    #[error("creating notifier eventfds: {0}")]
    NotifierEventFds(io::Error),
}

/// Why the function could not start its device when the driver set DRIVER_OK.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("queue {queue}: {source}")]
    QueueConfig {
        queue: u16,
        source: virtio_queue::Error,
    },
    #[error("queue {0}: rings are misaligned or outside guest memory")]
    Rings(u16),
    #[error("queue {0}: no notifier eventfd")]
    NoNotifier(u16),
    #[error(transparent)]
    Device(#[from] ActivateError),
}
