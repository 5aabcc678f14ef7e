//! The virtio-pci modern transport and the virtio-scsi device; the SCSI disk emulation it drives
//! is the `scsi-disk` crate.

pub mod bar_layout;
pub mod common_cfg;
pub mod features;
mod inline_queue_host;
pub mod memory_fault;
pub mod pci_caps;
pub mod pci_function;
pub mod queue_worker;
mod recheck_timer;
pub mod scsi_device;
pub mod status;
pub mod transport_error;
pub mod virtio_device;

pub use inline_queue_host::InlineQueueHost;
pub use pci_function::{
    ConfigNotifier, MsixInterrupt, QueueNotifyAddress, VirtioPciFunction, NO_VECTOR,
    VIRTIO_VENDOR_ID,
};
pub use queue_worker::{QueueHost, QueueWorker, WorkerEvent};
pub use recheck_timer::RecheckTimer;
pub use scsi_device::{
    EngineFactory, EventDelivery, LunState, LunStats, QueueCounters, QueueStats, RemovedLun,
    ScsiDevice, ScsiDeviceConfig, ScsiDeviceError, ScsiEvent, LATENCY_BUCKETS, SENSE_KEYS,
};
pub use transport_error::{Region, StartError, TransportError};
pub use virtio_device::{
    ActivateError, Activation, ActiveQueue, GuestMemory, Interrupt, VirtioDevice,
};
