//! The vfio-user server: the protocol (`protocol`, `message`, `irq`), the socket (`connection`,
//! `socket_path`), DMA mappings (`dma`), request handling (`dispatch`), the mio main loop
//! (`server`), the command line and logging. It serves any `Device`.

pub mod cli;
pub mod connection;
pub mod controller;
pub mod device;
pub mod disk_spec;
pub mod dispatch;
pub mod dma;
pub mod irq;
pub mod logging;
pub mod mapping;
pub mod message;
pub mod protocol;
pub mod server;
pub mod socket_path;
pub mod virtio_function;

pub use device::{
    Device, DeviceError, DmaMemory, IoFd, IrqAction, IrqInfo, MmapArea, RegionInfo, RegionMmap,
};
pub use server::{Server, ServerError, ShutdownHandle};
