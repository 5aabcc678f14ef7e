//! The vfio-user-scsi application: the command line and disk specs, logging, the iothreads that
//! serve the device's queues (`iothread`, `iothread_pool`, `queue_set`, `poll_window`), the
//! iothread-vq-mapping, and the glue that serves the virtio-scsi function over vfio-user
//! (`controller`, `virtio_function`), and the bound on stopping (`shutdown_deadline`).

pub mod cli;
pub mod controller;
pub mod disk_spec;
pub mod iothread;
pub mod iothread_pool;
pub mod logging;
pub mod mapping;
pub mod poll_window;
pub mod queue_set;
pub mod shutdown_deadline;
pub mod virtio_function;
