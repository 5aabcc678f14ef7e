//! How long an iothread polls its queues before it sleeps: a window that adapts to how long the
//! thread waits for work, as QEMU's adaptive aio polling (util/aio-posix.c, `poll-max-ns` with
//! its default `poll-grow` and `poll-shrink`) does.
//!
//! What is measured is the wait: from the end of serving until work was found again (by polling,
//! or by the wake-up that ended a sleep), never the time spent serving, so that one slow batch
//! says nothing about polling. A wait within the window keeps it; a wait past the window but
//! within the maximum shows a longer window would have found the work without a kick, and
//! doubles it (from 4 µs, up to the maximum); a wait past the maximum shows polling could not
//! have helped, and turns it off until waits are short again.
//!
//! Turning off rather than halving matters where the host's CPUs are few: in a TCG guest, whose
//! requests reach a queue tens to hundreds of microseconds apart, a window kept open across the
//! long gaps found few requests and took the vCPUs' CPU time (measured: more kicks per request,
//! not fewer, and half the IOPS).

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

    /// `waited` is the time from the end of serving until work was found again: the polling
    /// that found nothing, then the sleep when polling gave up.
    pub fn adjust(&mut self, waited: Duration) {
        let waited = u64::try_from(waited.as_nanos()).unwrap_or(u64::MAX);
        if self.max_ns == 0 || waited <= self.ns {
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

    fn grown(max_ns: u64, waits: &[u64]) -> PollWindow {
        let mut window = PollWindow::new(max_ns);
        for &wait in waits {
            window.adjust(ns(wait));
        }
        window
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
        window.adjust(ns(32_768));
        assert_eq!(window.current(), ns(32_768));
    }

    #[test]
    fn keeps_the_window_when_polling_finds_work() {
        let mut window = grown(32_768, &[10_000]);
        window.adjust(ns(1_000));
        window.adjust(ns(3_000));
        window.adjust(ns(4_000));
        assert_eq!(window.current(), ns(4_000));
    }

    #[test]
    fn work_found_at_once_never_opens_the_window() {
        let mut window = PollWindow::new(32_768);
        for _ in 0..10 {
            window.adjust(ns(0));
        }
        assert_eq!(window.current(), ns(0));
    }

    #[test]
    fn a_wait_past_the_maximum_turns_polling_off() {
        let mut window = grown(32_768, &[10_000, 10_000, 10_000, 20_000]);
        assert_eq!(window.current(), ns(32_000));
        window.adjust(ns(32_769));
        assert_eq!(window.current(), ns(0));
        window.adjust(ns(20_000));
        assert_eq!(window.current(), ns(4_000), "short waits open it again");
    }

    #[test]
    fn a_zero_maximum_never_polls() {
        let mut window = PollWindow::new(0);
        window.adjust(ns(10));
        window.adjust(ns(10_000));
        assert_eq!(window.current(), ns(0));
    }
}
