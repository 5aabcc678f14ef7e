//! What a logical unit changes while it runs: the pending unit attention and the write cache
//! enable bit MODE SELECT sets. Commands on every request queue read it, each from its own
//! thread, so it is atomics: reading it writes nothing, and the rare change (a reset, a
//! hotplug, a MODE SELECT) is one atomic store.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use super::sense::Sense;

/// The unit attention conditions we raise, as the one pending at a time (SAM-5 5.14: a later
/// condition replaces an earlier one, except that POWER ON, RESET already tells the initiator
/// to re-read everything).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum UnitAttention {
    None = 0,
    PowerOnReset,
    ReportedLunsDataChanged,
    CapacityDataChanged,
}

impl UnitAttention {
    fn from_u8(value: u8) -> UnitAttention {
        match value {
            1 => UnitAttention::PowerOnReset,
            2 => UnitAttention::ReportedLunsDataChanged,
            3 => UnitAttention::CapacityDataChanged,
            _ => UnitAttention::None,
        }
    }

    fn sense(self) -> Option<Sense> {
        match self {
            UnitAttention::None => None,
            UnitAttention::PowerOnReset => Some(Sense::POWER_ON_RESET_OCCURRED),
            UnitAttention::ReportedLunsDataChanged => Some(Sense::REPORTED_LUNS_DATA_HAS_CHANGED),
            UnitAttention::CapacityDataChanged => Some(Sense::CAPACITY_DATA_HAS_CHANGED),
        }
    }
}

#[derive(Debug)]
pub(crate) struct UnitState {
    unit_attention: AtomicU8,
    write_cache: AtomicBool,
}

impl UnitState {
    /// A new unit reports POWER ON, RESET once and has its write cache on.
    pub(crate) fn new() -> UnitState {
        UnitState {
            unit_attention: AtomicU8::new(UnitAttention::PowerOnReset as u8),
            write_cache: AtomicBool::new(true),
        }
    }

    /// Takes the pending unit attention: exactly one command reports it, whichever queue it
    /// came from. Costs one load when none is pending.
    pub(crate) fn take_unit_attention(&self) -> Option<Sense> {
        if self.unit_attention.load(Ordering::Acquire) == UnitAttention::None as u8 {
            return None;
        }
        let taken = self
            .unit_attention
            .swap(UnitAttention::None as u8, Ordering::AcqRel);
        UnitAttention::from_u8(taken).sense()
    }

    /// Makes `condition` pending, unless POWER ON, RESET is.
    pub(crate) fn raise(&self, condition: UnitAttention) {
        let _ = self
            .unit_attention
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |pending| {
                (pending != UnitAttention::PowerOnReset as u8).then_some(condition as u8)
            });
    }

    /// A reset: POWER ON, RESET replaces whatever was pending. The write cache setting
    /// survives, as in QEMU.
    pub(crate) fn reset(&self) {
        self.unit_attention
            .store(UnitAttention::PowerOnReset as u8, Ordering::Release);
    }

    pub(crate) fn write_cache(&self) -> bool {
        self.write_cache.load(Ordering::Acquire)
    }

    pub(crate) fn set_write_cache(&self, enabled: bool) {
        self.write_cache.store(enabled, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_unit_attention_at_a_time_and_power_on_reset_sticks() {
        let state = UnitState::new();
        state.raise(UnitAttention::CapacityDataChanged);
        assert_eq!(
            state.take_unit_attention(),
            Some(Sense::POWER_ON_RESET_OCCURRED)
        );
        assert_eq!(state.take_unit_attention(), None);
        state.raise(UnitAttention::CapacityDataChanged);
        state.raise(UnitAttention::ReportedLunsDataChanged);
        assert_eq!(
            state.take_unit_attention(),
            Some(Sense::REPORTED_LUNS_DATA_HAS_CHANGED)
        );
        state.raise(UnitAttention::CapacityDataChanged);
        state.reset();
        assert_eq!(
            state.take_unit_attention(),
            Some(Sense::POWER_ON_RESET_OCCURRED)
        );
    }

    #[test]
    fn exactly_one_thread_takes_a_unit_attention() {
        let state = UnitState::new();
        let taken: usize = std::thread::scope(|scope| {
            let threads: Vec<_> = (0..4)
                .map(|_| scope.spawn(|| usize::from(state.take_unit_attention().is_some())))
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).sum()
        });
        assert_eq!(taken, 1);
    }

    #[test]
    fn write_cache_starts_on() {
        let state = UnitState::new();
        assert!(state.write_cache());
        state.set_write_cache(false);
        state.reset();
        assert!(!state.write_cache());
    }
}
