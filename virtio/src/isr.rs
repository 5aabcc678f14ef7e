//! The ISR status byte: read-to-clear, set by interrupts (mostly unused with MSI-X).

use std::sync::atomic::{AtomicU8, Ordering};

pub const QUEUE_INTERRUPT: u8 = 1;
pub const CONFIG_INTERRUPT: u8 = 2;

#[derive(Debug, Default)]
pub struct Isr(AtomicU8);

impl Isr {
    pub fn raise(&self, bits: u8) {
        self.0.fetch_or(bits, Ordering::SeqCst);
    }

    /// What the driver reads: the bits, cleared by the read.
    pub fn take(&self) -> u8 {
        self.0.swap(0, Ordering::SeqCst)
    }

    pub fn clear(&self) {
        self.0.store(0, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reading_clears() {
        let isr = Isr::default();
        isr.raise(CONFIG_INTERRUPT);
        isr.raise(QUEUE_INTERRUPT);
        assert_eq!(isr.take(), 3);
        assert_eq!(isr.take(), 0);
    }
}
