//! `Interrupt` on MSI-X: the vector comes from a register the driver may rewrite at any time.

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;

use pci::MsixVectors;

use crate::isr::{Isr, CONFIG_INTERRUPT};
use crate::virtio_device::Interrupt;

/// The vector number meaning "no interrupt" (virtio 1.2, 4.1.5.1.2).
pub const NO_VECTOR: u16 = 0xffff;

/// Raises the MSI-X vector currently assigned to a queue or to configuration changes.
pub struct MsixInterrupt {
    vectors: Arc<MsixVectors>,
    vector: Arc<AtomicU16>,
    isr: Arc<Isr>,
    isr_bit: u8,
}

impl MsixInterrupt {
    pub fn new(
        vectors: Arc<MsixVectors>,
        vector: Arc<AtomicU16>,
        isr: Arc<Isr>,
        isr_bit: u8,
    ) -> Self {
        MsixInterrupt {
            vectors,
            vector,
            isr,
            isr_bit,
        }
    }
}

impl Interrupt for MsixInterrupt {
    fn trigger(&self) {
        let vector = self.vector.load(Ordering::Acquire);
        if vector == NO_VECTOR {
            // No MSI-X message: the ISR bit is all the driver can find (by polling).
            self.isr.raise(self.isr_bit);
            return;
        }
        if self.isr_bit == CONFIG_INTERRUPT {
            self.isr.raise(self.isr_bit);
        }
        // The register only ever holds NO_VECTOR or a vector that exists, and an eventfd write
        // can only fail on a closed descriptor, which the client replaces with SET_IRQS.
        let _ = self.vectors.signal(vector);
    }
}
