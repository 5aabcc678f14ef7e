//! Device-side changes the driver must hear about: configuration changes and DEVICE_NEEDS_RESET.
//! A handle any thread may hold.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use crate::notifications::MsixInterrupt;
use crate::status::DEVICE_NEEDS_RESET;
use crate::virtio_device::Interrupt;

pub struct ConfigNotifier {
    pub(crate) status: Arc<AtomicU8>,
    pub(crate) generation: Arc<AtomicU8>,
    pub(crate) interrupt: MsixInterrupt,
}

impl ConfigNotifier {
    /// The device configuration changed: bump config_generation and raise the config vector.
    pub fn config_changed(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.interrupt.trigger();
    }

    /// The device cannot go on until the driver resets it.
    pub fn needs_reset(&self) {
        self.status.fetch_or(DEVICE_NEEDS_RESET, Ordering::SeqCst);
        self.interrupt.trigger();
    }
}
