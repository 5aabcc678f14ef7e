//! A vfio-user server for any device: it speaks the protocol (messages, DMA mappings, IRQ
//! eventfds) to one client at a time on a UNIX socket and hands the device behind the `Device`
//! trait region accesses, DMA changes, IRQ actions and resets. It knows nothing of PCI, virtio or
//! how the device uses threads.
//!
//! `Server` binds the socket and runs the mio loop; `DmaMemory` is the guest memory view that
//! DMA_MAP and DMA_UNMAP edit. For fuzzing: `Connection` is one client's socket cut into
//! messages, `decode_message` the decoder on its own, and `Replay` a whole connection without a
//! socket.

mod connection;
mod device;
mod dma;
mod irq;
mod protocol;
mod replay;
mod server;
mod socket_path;

pub use connection::{
    decode_message, send_with_fds, Connection, Incoming, MessageError, ReadOutcome,
};
pub use device::{
    Device, DeviceError, DmaMemory, IoFd, IrqAction, IrqInfo, MmapArea, RegionInfo, RegionMmap,
};
pub use protocol::{Header, HEADER_SIZE, MAX_BODY_SIZE};
pub use replay::Replay;
pub use server::{Flow, Listener, MainLoopHook, Server, ServerError, ServerStatus, ShutdownHandle};
pub use socket_path::{activated_listener, BoundSocket, SocketAccess, SocketPathError};
