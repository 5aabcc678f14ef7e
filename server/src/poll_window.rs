//! How long an iothread polls its queues before it sleeps: a window that adapts to how soon
//! work arrives, as QEMU's adaptive aio polling (`poll-max-ns`) does. Work found within the
//! window keeps it; work that came soon after it ran out doubles it (from 4 µs, up to the
//! maximum); a sleep longer than the maximum shows polling would not have helped and turns it
//! off until work comes quickly again.

use std::time::Duration;

/// The first window after polling was off.
const INITIAL_NS: u64 = 4_000;
const GROWTH: u64 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollWindow {
    ns: u64,
    max_ns: u64,
}

impl PollWindow {
    /// `max_ns` 0 disables polling.
    pub fn new(max_ns: u64) -> PollWindow {
        PollWindow { ns: 0, max_ns }
    }

    /// How long to poll next; zero means do not poll.
    pub fn current(&self) -> Duration {
        Duration::from_nanos(self.ns)
    }

    /// `waited` is the time from the start of polling until work was found (the window, then
    /// the sleep, when polling found none).
    pub fn adjust(&mut self, waited: Duration) {
        let waited = u64::try_from(waited.as_nanos()).unwrap_or(u64::MAX);
        if self.max_ns == 0 || (self.ns != 0 && waited <= self.ns) {
            return;
        }
        if waited > self.max_ns {
            self.ns = 0;
        } else if self.ns < self.max_ns {
            self.ns = match self.ns {
                0 => INITIAL_NS,
                ns => ns.saturating_mul(GROWTH),
            }
            .min(self.max_ns);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(n: u64) -> Duration {
        Duration::from_nanos(n)
    }

    #[test]
    fn grows_while_work_comes_soon_after_the_window() {
        let mut window = PollWindow::new(32_768);
        assert_eq!(window.current(), ns(0));
        window.adjust(ns(10_000));
        assert_eq!(window.current(), ns(4_000));
        window.adjust(ns(10_000));
        assert_eq!(window.current(), ns(8_000));
        window.adjust(ns(10_000));
        assert_eq!(window.current(), ns(16_000));
        window.adjust(ns(20_000));
        assert_eq!(window.current(), ns(32_000));
        window.adjust(ns(32_500));
        assert_eq!(window.current(), ns(32_768), "capped at the maximum");
    }

    #[test]
    fn keeps_the_window_when_polling_finds_work() {
        let mut window = PollWindow::new(32_768);
        window.adjust(ns(1_000));
        window.adjust(ns(3_000));
        assert_eq!(window.current(), ns(4_000));
    }

    #[test]
    fn long_sleeps_turn_polling_off() {
        let mut window = PollWindow::new(32_768);
        window.adjust(ns(10_000));
        window.adjust(ns(10_000));
        window.adjust(Duration::from_millis(5));
        assert_eq!(window.current(), ns(0));
    }

    #[test]
    fn a_zero_maximum_never_polls() {
        let mut window = PollWindow::new(0);
        window.adjust(ns(10));
        assert_eq!(window.current(), ns(0));
    }
}
