//! The vfio-user server: the protocol (`protocol`, `message`, `irq`), the socket (`connection`,
//! `socket_path`), DMA mappings (`dma`), request handling (`dispatch`), the mio main loop
//! (`server`), the iothreads that serve the device's queues (`iothread`, `iothread_pool`,
//! `queue_set`, `poll_window`), and the application: the command line, logging, the signal
//! policy, the control socket and its client (`operator`, `control_socket`, `control_commands`,
//! `ctl`), systemd readiness. The protocol part serves any `Device`.

pub mod cli;
pub mod connection;
pub mod control_commands;
pub mod control_socket;
pub mod controller;
pub mod ctl;
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
pub mod operator;
pub mod poll_window;
pub mod protocol;
pub mod queue_set;
pub mod sd_notify;
pub mod server;
pub mod signals;
pub mod socket_path;
pub mod virtio_function;

pub use device::{
    Device, DeviceError, DmaMemory, IoFd, IrqAction, IrqInfo, MmapArea, RegionInfo, RegionMmap,
};
pub use server::{Server, ServerError, ShutdownHandle};
