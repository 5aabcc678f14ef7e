//! The vfio-user server: the protocol (`protocol`, `message`, `irq`), the socket (`connection`,
//! `socket_path`), DMA mappings (`dma`), request handling (`dispatch`), the mio main loop
//! (`server`), the iothreads that serve the device's queues (`iothread`, `iothread_pool`,
//! `queue_set`, `poll_window`), the command line and logging. It serves any `Device`.

pub mod cli;
pub mod connection;
pub mod controller;
pub mod device;
pub mod disk_spec;
pub mod dispatch;
pub mod dma;
pub mod iothread;
pub mod iothread_pool;
pub mod irq;
pub mod logging;
pub mod mapping;
pub mod message;
pub mod poll_window;
pub mod protocol;
pub mod queue_set;
pub mod server;
pub mod shutdown_deadline;
pub mod socket_path;
pub mod virtio_function;

pub use device::{
    Device, DeviceError, DmaMemory, IoFd, IrqAction, IrqInfo, MmapArea, RegionInfo, RegionMmap,
};
pub use server::{Server, ServerError, ShutdownHandle};
