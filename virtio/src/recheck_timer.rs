//! The re-checks a queue host owes its workers: a worker that let its driver batch kicks asks
//! to be looked at again after a while (`QueueWorker::recheck_in`), and the host keeps one
//! timerfd, in the same epoll as the queues' eventfds, armed for the earliest of those.
//!
//! Arming is one `timerfd_settime` and only when the new deadline comes before the armed one;
//! expiry needs no read (re-arming resets the timerfd's count, and the hosts watch it
//! edge-triggered). A deadline that is no longer wanted is forgotten, not disarmed: the
//! expiry then finds nothing due and arms the timer for what is left. A deadline booked after
//! the armed one went by arms nothing either: that expiry's event is on its way to the host,
//! whose `take_due` arms for what is left, so a busy queue whose pass ends between the expiry
//! and the host's look costs one `timerfd_settime`, not two. Hence a host that takes events off
//! its epoll without serving them (a drain) still calls `take_due` for the timer's.
//!
//! A host that does its own waiting (an iothread) needs no timerfd: it ends its waits at
//! `next_due` instead ([`RecheckTimer::for_own_waits`]). A busy queue then moves its re-check
//! later at every pass for nothing at all: no `timerfd_settime`, and no expiry that finds
//! nothing due.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::{Duration, Instant};

use vmm_sys_util::timerfd::TimerFd;

use crate::queue_worker::QueueWorker;

pub struct RecheckTimer {
    /// None for a host whose own waits end at `next_due`.
    timer: Option<TimerFd>,
    /// By the host's worker slot.
    deadlines: Vec<Option<Instant>>,
    /// What the timerfd is armed for, if anything.
    armed: Option<Instant>,
}

impl RecheckTimer {
    /// Re-checks signalled by a timerfd, for a host whose waiting is done by someone else
    /// (nested in another loop's `Poll`, or a test's calls).
    pub fn new() -> io::Result<RecheckTimer> {
        Ok(RecheckTimer {
            timer: Some(TimerFd::new().map_err(io::Error::from)?),
            deadlines: Vec::new(),
            armed: None,
        })
    }

    /// Re-checks for a host that waits by itself and ends each wait at `next_due`.
    pub fn for_own_waits() -> RecheckTimer {
        RecheckTimer {
            timer: None,
            deadlines: Vec::new(),
            armed: None,
        }
    }

    /// Readable when a re-check may be due (watch it edge-triggered); None for a timer
    /// `for_own_waits`.
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        // SAFETY: the timerfd stays open as long as `self`, which the borrow cannot outlive.
        let fd = |timer: &TimerFd| unsafe { BorrowedFd::borrow_raw(timer.as_raw_fd()) };
        self.timer.as_ref().map(fd)
    }

    /// The earliest re-check booked.
    pub fn next_due(&self) -> Option<Instant> {
        self.deadlines.iter().flatten().min().copied()
    }

    /// After the host called into `worker` (in `slot`): books the re-check it asks for, or
    /// forgets the one it no longer needs.
    pub fn book(&mut self, slot: usize, worker: &dyn QueueWorker) -> io::Result<()> {
        let due = worker.recheck_in();
        if self.deadlines.len() <= slot {
            if due.is_none() {
                return Ok(());
            }
            self.deadlines.resize(slot + 1, None);
        }
        let Some(delay) = due else {
            self.deadlines[slot] = None;
            return Ok(());
        };
        let deadline = Instant::now() + delay;
        self.deadlines[slot] = Some(deadline);
        match self.armed {
            Some(armed) if armed <= deadline => Ok(()),
            _ => self.arm(deadline, delay),
        }
    }

    /// Forgets `slot`'s re-check (its worker left the host).
    pub fn forget(&mut self, slot: usize) {
        if let Some(deadline) = self.deadlines.get_mut(slot) {
            *deadline = None;
        }
    }

    /// After the timerfd fired: the slots whose re-check is due, which are forgotten (the host
    /// books them again after calling `recheck`), and the timer armed for the others.
    pub fn take_due(&mut self, due: &mut Vec<usize>) -> io::Result<()> {
        let now = Instant::now();
        self.armed = None;
        let mut next: Option<Instant> = None;
        for (slot, deadline) in self.deadlines.iter_mut().enumerate() {
            match *deadline {
                Some(at) if at <= now => {
                    *deadline = None;
                    due.push(slot);
                }
                Some(at) => next = Some(next.map_or(at, |next| next.min(at))),
                None => {}
            }
        }
        match next {
            Some(at) => self.arm(at, at - now),
            None => Ok(()),
        }
    }

    fn arm(&mut self, deadline: Instant, delay: Duration) -> io::Result<()> {
        let Some(timer) = &mut self.timer else {
            return Ok(());
        };
        // A zero duration would disarm the timerfd.
        timer
            .reset(delay.max(Duration::from_nanos(1)), None)
            .map_err(io::Error::from)?;
        self.armed = Some(deadline);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::BorrowedFd;
    use std::sync::Arc;

    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    use super::*;

    struct AsksFor(Option<Duration>, Arc<EventFd>);

    impl QueueWorker for AsksFor {
        fn queue_index(&self) -> u16 {
            2
        }
        fn notifier(&self) -> &Arc<EventFd> {
            &self.1
        }
        fn notifier_ready(&mut self) {}
        fn completion_fd(&self) -> Option<BorrowedFd<'_>> {
            None
        }
        fn completions_ready(&mut self) {}
        fn in_flight(&self) -> usize {
            0
        }
        fn recheck_in(&self) -> Option<Duration> {
            self.0
        }
    }

    fn asking(delay: Option<Duration>) -> AsksFor {
        AsksFor(delay, Arc::new(EventFd::new(EFD_NONBLOCK).unwrap()))
    }

    /// Whether the timerfd becomes readable within `ms` milliseconds.
    fn fires_within(timer: &RecheckTimer, ms: i32) -> bool {
        let mut pollfd = libc::pollfd {
            fd: timer.fd().unwrap().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, for a descriptor `timer` keeps open.
        unsafe { libc::poll(&mut pollfd, 1, ms) == 1 }
    }

    fn due(timer: &mut RecheckTimer) -> Vec<usize> {
        let mut due = Vec::new();
        timer.take_due(&mut due).unwrap();
        due
    }

    #[test]
    fn the_timer_is_armed_for_the_earliest_recheck_and_then_for_the_rest() {
        let mut timer = RecheckTimer::new().unwrap();
        let ms = Duration::from_millis;
        timer.book(3, &asking(Some(ms(200)))).unwrap();
        timer.book(1, &asking(Some(ms(5)))).unwrap();
        timer.book(0, &asking(None)).unwrap();
        assert!(timer.armed.is_some_and(|at| at < Instant::now() + ms(6)));
        std::thread::sleep(ms(10));
        assert_eq!(due(&mut timer), [1]);
        assert!(
            timer.timer.as_ref().unwrap().is_armed().unwrap(),
            "armed for slot 3"
        );
        assert!(
            due(&mut timer).is_empty(),
            "slot 1 was taken, slot 3 is not due"
        );
        timer.forget(3);
        assert!(due(&mut timer).is_empty());
        assert!(timer.armed.is_none(), "nothing left to arm for");
    }

    #[test]
    fn a_booking_after_an_expiry_leaves_the_arming_to_take_due() {
        let mut timer = RecheckTimer::new().unwrap();
        let ms = Duration::from_millis;
        timer.book(0, &asking(Some(ms(1)))).unwrap();
        assert!(fires_within(&timer, 1_000));
        // Slot 1's pass ends before the host looked at the expiry.
        timer.book(1, &asking(Some(ms(100)))).unwrap();
        assert!(
            !timer.timer.as_ref().unwrap().is_armed().unwrap(),
            "the booking armed the timer again: a second timerfd_settime for one expiry"
        );
        assert_eq!(due(&mut timer), [0]);
        assert!(
            timer.timer.as_ref().unwrap().is_armed().unwrap(),
            "armed for slot 1"
        );
        assert!(timer.armed.is_some_and(|at| at > Instant::now() + ms(50)));
    }

    #[test]
    fn a_timer_for_own_waits_keeps_the_deadlines_for_the_waits_and_arms_nothing() {
        let mut timer = RecheckTimer::for_own_waits();
        let ms = Duration::from_millis;
        assert!(timer.fd().is_none());
        timer.book(1, &asking(Some(ms(200)))).unwrap();
        timer.book(0, &asking(Some(ms(5)))).unwrap();
        assert!(timer
            .next_due()
            .is_some_and(|at| at < Instant::now() + ms(6)));
        std::thread::sleep(ms(10));
        assert_eq!(due(&mut timer), [0]);
        assert!(timer
            .next_due()
            .is_some_and(|at| at > Instant::now() + ms(100)));
        assert!(timer.armed.is_none());
    }

    #[test]
    fn a_worker_that_no_longer_asks_is_not_rechecked() {
        let mut timer = RecheckTimer::new().unwrap();
        timer
            .book(0, &asking(Some(Duration::from_millis(1))))
            .unwrap();
        timer.book(0, &asking(None)).unwrap();
        std::thread::sleep(Duration::from_millis(3));
        assert!(due(&mut timer).is_empty());
    }
}
