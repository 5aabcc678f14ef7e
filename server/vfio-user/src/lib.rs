//! A vfio-user server library: the protocol (`protocol`, `message`, `irq`), the socket
//! (`connection`, `socket_path`), DMA mappings (`dma`), request handling (`dispatch`) and the mio
//! main loop (`server`). It serves any `Device`.

pub mod connection;
pub mod device;
pub mod dispatch;
pub mod dma;
pub mod irq;
pub mod message;
pub mod protocol;
pub mod server;
pub mod socket_path;

pub use device::{
    Device, DeviceError, DmaMemory, IoFd, IrqAction, IrqInfo, MmapArea, RegionInfo, RegionMmap,
};
pub use server::{Server, ServerError, ShutdownHandle};
