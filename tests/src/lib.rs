//! Test support: a userspace virtio-scsi driver over vfio-user and helpers for guest tests.
//!
//! The driver is an independent peer of our server, written from the virtio 1.2 and vfio-user
//! specifications: `vfio_client` speaks the protocol, `guest_memory` is the DMA-mapped memfd,
//! `pci_probe` reads config space, `virtio_pci` the transport registers, `split_queue` the rings,
//! `scsi` the virtio-scsi wire formats and CDBs, `scsi_request` a command in flight, `driver_queue` one
//! virtqueue with its kick and interrupt, `driver` the device as a whole, and `server_process`
//! starts the `vfio-user-scsi` binary for a test, and `fault_fs` is a FUSE file system whose disk
//! image fails reads, writes and fsyncs on demand, `small_tmpfs` a tmpfs that really fills up. `guest` runs tests inside a QEMU guest.

pub mod driver;
mod driver_queue;
pub mod fault_fs;
pub mod guest;
pub mod guest_memory;
pub mod pci_probe;
pub mod scsi;
mod scsi_request;
pub mod server_process;
pub mod small_tmpfs;
pub mod split_queue;
pub mod vfio_client;
pub mod virtio_pci;

pub use driver::{DriverError, DriverOptions, KickMode, VirtioScsiDriver, WaitMode};
pub use driver_queue::DriverQueue;
pub use scsi::ParsedScsiConfig;
pub use scsi_request::{ScsiRequest, ScsiResult, UsedChain};
pub use server_process::ServerProcess;
