//! The vfio-user-scsi application: the command line and disk specs, logging, the iothreads that
//! serve the device's queues (`iothread`, `iothread_pool`, `queue_set`, `poll_window`), the
//! iothread-vq-mapping, the glue that serves the virtio-scsi function over vfio-user
//! (`controller`, `virtio_function`), and operations: the signal policy, the control socket and
//! its client (`operator`, `control_socket`, `control_commands`, `ctl`), systemd readiness, and
//! the steps of stopping (`shutdown_progress`) and their bound (`shutdown_deadline`).

pub mod allocation_counter;
pub mod cli;
pub mod control_commands;
pub mod control_socket;
pub mod controller;
pub mod ctl;
pub mod disk_spec;
pub mod iothread;
pub mod iothread_pool;
pub mod logging;
pub mod mapping;
pub mod operator;
pub mod poll_window;
pub mod queue_set;
pub mod sd_notify;
pub mod shutdown_deadline;
pub mod shutdown_progress;
pub mod signals;
pub mod virtio_function;
