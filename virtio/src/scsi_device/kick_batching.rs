//! When a busy request queue asks its driver for the next kick.
//!
//! A kick costs the guest a vCPU exit and the device a wake-up (two with QEMU's vfio-user
//! client: a socket message to the main loop, then the queue's iothread). Linux's driver kicks
//! only when the chains it added since its last kick include `avail_event` (virtio 1.2 §2.7.10,
//! `vring_need_event`), so a device that asks for the kick a batch ahead gets one kick per
//! batch instead of one per chain, as long as it looks at the ring by itself for a batch that
//! stays shorter: its host re-checks it on a timer (`QueueWorker::recheck_in`).
//!
//! Holding a chain until a re-check costs nothing while the driver has other requests out,
//! and costs a whole round trip at queue depth 1, where the driver waits for each answer
//! before it sends the next. The two are told apart by what the driver holds when a look at
//! the ring finds chains: those chains, those in flight, and the answers it has not read yet
//! (EVENT_IDX `used_event` says how far it read; a device that answers at once and a host that
//! polls see one chain per look from any driver). So:
//! - a queue whose driver held more than two chains at its looks of late (a decaying average)
//!   is *busy*; any other queue asks for the kick of the next chain, as without batching;
//! - a busy queue whose driver makes its window available at once also asks for the kick of
//!   the next chain: the look after such a kick found at least half the most chains the
//!   driver has had with the device. That driver kicks once a window whatever the device
//!   asks, so a batch ahead would save no kick, and its re-check would cost a timer armed at
//!   every sleep (on a virtual machine each one a trap to the hypervisor, several µs). The
//!   look after each such kick tells again; a driver that trickles is batched from then on,
//!   with a kick asked at the next chain once in 32 batches to see whether it still does.
//!   Polling ends as below whatever the driver did before it;
//! - a busy queue asks for the kick once twice as many chains as it got since notifications
//!   last went back on, plus two, are available (a burst comes at once), and for a re-check
//!   after three times the time those chains took (20 µs to 1 ms), which ends a batch that
//!   stays shorter;
//! - but never for more chains than the driver can send without an answer: the most it has
//!   held at once (a decaying maximum), less what is in flight. A driver at depth 32 that
//!   answers at once is asked for the kick at its 32nd chain, not made to wait for the
//!   re-check;
//! - the re-check delay follows the time batches take when a kick ends them; a pass the
//!   re-check itself started keeps the delay, which would otherwise feed on its own wait;
//! - a re-check that finds nothing looks again after twice as long, until the queue has been
//!   quiet for 2 ms; then it asks for the kick of the next chain and for no more re-checks,
//!   and its pass looks at the ring once more before the thread sleeps.
//!
//! Chains a pass finds are served at once, short of the batch or not: only chains still to come
//! wait for the kick or the re-check. A pass that stops at its bound (about a ring's worth of
//! chains, `RequestQueueWorker::serve_available`) with chains left asks for no kick, and for
//! a re-check at once (`pass_ended`).
//!
//! A host that polls keeps kicks off while its polls find work: polling moves `avail_event`
//! behind the driver (where the last pass put it, a batch ahead, the driver would kick once
//! more), and a kick sent before that is served as one more poll, which leaves notifications
//! off (a pass would ask for the next kick, and a driver that never stops would then kick for
//! every batch while the host believed them off). When a stretch of polling ends
//! in vain on a busy queue, the queue asks for the kick a batch ahead as above, but its
//! re-check comes once about half that batch has come at the pace polling found it: the
//! re-checks stand in for the polls, and the host does not poll after a wake-up that was a
//! re-check alone (`QueueSet::poll_queues`), as polls spun after each re-check took the vCPUs'
//! cores in a TCG guest.
//!
//! The same state says when a pass may leave its interrupt to the queue's next look
//! (`may_defer_interrupt`): the guest pays for each interrupt, and a busy driver that can still
//! send as many chains again as it holds loses nothing by reading more answers per interrupt.

use std::time::Duration;

/// Bounds of the re-check delay: soon enough that a short batch waits little, long enough that
/// re-checks are not a spinning poll.
const MIN_RECHECK: Duration = Duration::from_micros(20);
const MAX_RECHECK: Duration = Duration::from_micros(1_000);
/// How long a busy queue may stay quiet before it asks for the next kick again.
const QUIET_LIMIT: Duration = Duration::from_micros(2_000);
/// The re-check comes after this many times the time the last batch took to arrive.
const RECHECK_FACTOR: u32 = 3;
/// A batching queue asks for the kick of the next chain once in this many batches, to see
/// whether its driver has taken to sending its window at once.
const PROBE_EVERY: u32 = 32;
/// Weight of one pass in the decaying averages (fixed point: a pass adds 16 and loses 1/8).
const ONE: u64 = 16;

#[derive(Debug)]
pub(crate) struct KickBatching {
    max_ahead: u16,
    /// Chains popped since notifications last went back on.
    popped: usize,
    /// The clock (ns) when they last went back on.
    rearmed_at: u64,
    /// How many chains ahead the next kick was asked for (1: the next chain).
    ahead: u16,
    recheck: Option<Duration>,
    /// How long a busy queue has found nothing.
    quiet_for: u64,
    /// Decaying averages over the looks that found chains: the chains the driver had out then,
    /// and looks.
    load: u64,
    passes: u64,
    /// The most chains the driver has had with the device at once, decaying by 1/8 a look
    /// (fixed point, `ONE` a chain).
    depth: u64,
    polling: bool,
    /// The last pass stopped at its bound with chains left: the host looks again at once.
    chains_left: bool,
    /// Chains the first look since notifications last went back on found.
    first_look: usize,
    /// The look after the last kick asked at the next chain found half the driver's window or
    /// more: it sends its window at once.
    sends_windows: bool,
    /// Batches asked for since the last probe (a kick asked at the next chain).
    batched_since_probe: u32,
}

impl KickBatching {
    pub fn new(queue_size: u16) -> KickBatching {
        KickBatching {
            max_ahead: (queue_size / 2).max(1),
            popped: 0,
            rearmed_at: 0,
            ahead: 1,
            recheck: None,
            quiet_for: 0,
            load: 0,
            passes: 0,
            depth: 0,
            polling: false,
            chains_left: false,
            first_look: 0,
            sends_windows: false,
            batched_since_probe: 0,
        }
    }

    /// A look at the ring (a pass, or a poll) found `chains`, with the driver holding
    /// `outstanding` (at least `chains`): these, those in flight, and the answers it has not
    /// read yet, as far as it says (`Virtqueue::driver_holds`).
    pub fn popped(&mut self, chains: usize, outstanding: usize) {
        if chains == 0 {
            return;
        }
        if self.popped == 0 {
            self.first_look = chains;
        }
        self.popped += chains;
        let outstanding = outstanding.max(chains) as u64 * ONE;
        self.load = self.load - self.load / 8 + outstanding;
        self.passes = self.passes - self.passes / 8 + ONE;
        self.depth = outstanding.max(self.depth - self.depth / 8);
    }

    /// Notifications go back on at `now` (ns), with `in_flight` chains still with the device:
    /// how many chains ahead the driver's next kick should come (1: at the next chain), with
    /// the re-check that goes with it.
    pub fn rearm(&mut self, now: u64, in_flight: usize) -> u16 {
        let polled = std::mem::take(&mut self.polling);
        let popped = std::mem::take(&mut self.popped);
        let elapsed = now.saturating_sub(std::mem::replace(&mut self.rearmed_at, now));
        let busy = self.passes * 2 < self.load;
        if popped > 0 && self.ahead == 1 && !polled {
            self.sends_windows = (self.first_look as u64) * ONE * 2 >= self.depth;
        }
        if popped == 0 {
            let quiet = self.quiet_for.saturating_add(elapsed);
            if busy && self.ahead > 1 && quiet < QUIET_LIMIT.as_nanos() as u64 {
                self.quiet_for = quiet;
                let wait = self.recheck.unwrap_or(MIN_RECHECK) * 2;
                self.recheck = Some(wait.clamp(MIN_RECHECK, MAX_RECHECK));
                return self.ahead;
            }
        }
        self.quiet_for = 0;
        self.ahead = self.ahead_for(popped, in_flight, busy && (polled || !self.sends_windows));
        if self.ahead > 1 {
            self.batched_since_probe += 1;
            if self.batched_since_probe >= PROBE_EVERY {
                self.batched_since_probe = 0;
                self.ahead = 1;
            }
        }
        if self.ahead == 1 {
            self.recheck = None;
            return 1;
        }
        let elapsed = Duration::from_nanos(elapsed);
        let wait = match self.recheck {
            // Polling found the chains one by one: the re-check comes when about half the
            // batch has come at that pace, standing in for the polls (and for the kick).
            _ if polled => {
                let per_chain = elapsed / u32::try_from(popped).unwrap_or(u32::MAX);
                per_chain.saturating_mul(u32::from(self.ahead) / 2)
            }
            Some(previous) if elapsed >= previous => previous,
            _ => elapsed.saturating_mul(RECHECK_FACTOR),
        };
        self.recheck = Some(wait.clamp(MIN_RECHECK, MAX_RECHECK));
        self.ahead
    }

    /// The pass that called `rearm` found more chains after it and served them: how many
    /// chains ahead the next kick should come now. The re-check delay stays: those chains came
    /// while the pass ran, and the microseconds they took say nothing of how long a batch takes
    /// to come.
    pub fn rearm_within_pass(&mut self, in_flight: usize) -> u16 {
        if self.ahead > 1 {
            self.ahead = self.ahead.min(self.reachable(in_flight)).max(1);
        }
        if self.ahead == 1 {
            self.recheck = None;
        }
        self.ahead
    }

    /// Twice the batch plus two, but no more than the driver can send unanswered; 1 (the next
    /// chain) for a queue that need not batch.
    fn ahead_for(&self, popped: usize, in_flight: usize, batches: bool) -> u16 {
        if popped == 0 || !batches {
            return 1;
        }
        let ahead = popped.saturating_mul(2).saturating_add(2);
        u16::try_from(ahead)
            .unwrap_or(u16::MAX)
            .min(self.reachable(in_flight))
            .min(self.max_ahead)
            .max(1)
    }

    /// How many chains the driver can send without an answer: the most it has had with the
    /// device at once, less what is in flight.
    fn reachable(&self, in_flight: usize) -> u16 {
        let most = usize::try_from(self.depth / ONE).unwrap_or(usize::MAX);
        u16::try_from(most.saturating_sub(in_flight)).unwrap_or(u16::MAX)
    }

    /// Polling starts: it looks at the ring by itself until `rearm`.
    pub fn start_polling(&mut self) {
        self.polling = true;
        self.recheck = None;
        self.chains_left = false;
    }

    /// How a pass ended: `true` when it stopped at its bound with chains still available.
    /// Notifications stay as the pass left them (off while the driver keeps sending), and the
    /// host is asked to look again at once, after its other queues and its own events.
    pub fn pass_ended(&mut self, chains_left: bool) {
        self.chains_left = chains_left;
    }

    /// Whether a look that found chains may leave its interrupt to the queue's next look, with
    /// the driver holding `holds` chains (the answers it has not read included): it is busy,
    /// can still send at least as many again without an answer, and a look is sure to come
    /// (polling, or the re-check). A look that finds no new chain interrupts: the driver may
    /// be waiting for the answers.
    pub fn may_defer_interrupt(&self, holds: usize) -> bool {
        let busy = self.passes * 2 < self.load;
        let look_coming = self.polling || self.recheck_in().is_some();
        busy && look_coming && holds as u64 * ONE * 2 <= self.depth
    }

    pub fn polling(&self) -> bool {
        self.polling
    }

    pub fn recheck_in(&self) -> Option<Duration> {
        if self.chains_left {
            return Some(Duration::ZERO);
        }
        self.recheck
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: u64 = 1_000;

    /// A queue whose passes each got `chains`, one every 100 µs from `start`, from a driver
    /// with 60 more with the device (a deep queue on a slow disk).
    fn passes(batching: &mut KickBatching, start: u64, chains: &[usize]) -> u64 {
        let mut now = start;
        for &count in chains {
            now += 100 * US;
            batching.popped(count, count + 60);
            batching.rearm(now, 0);
        }
        now
    }

    #[test]
    fn a_driver_that_waits_for_each_answer_is_asked_for_every_kick() {
        let mut batching = KickBatching::new(128);
        for at in 1..100 {
            batching.popped(1, 0);
            assert_eq!(batching.rearm(at * 100 * US, 0), 1);
            assert_eq!(batching.recheck_in(), None);
        }
        // Two depth-1 drivers on one queue now and then are no load.
        batching.popped(2, 0);
        assert_eq!(batching.rearm(10_000 * US, 0), 1);
        assert_eq!(batching.recheck_in(), None);
    }

    #[test]
    fn polls_that_find_one_chain_each_are_no_load() {
        let mut batching = KickBatching::new(128);
        batching.start_polling();
        for _ in 0..50 {
            batching.popped(1, 0);
        }
        assert_eq!(
            batching.rearm(5_000 * US, 0),
            1,
            "fifty chains, one per look"
        );
        assert_eq!(batching.recheck_in(), None);
    }

    #[test]
    fn a_busy_queue_asks_for_the_kick_a_batch_ahead_with_a_recheck() {
        let mut batching = KickBatching::new(128);
        let now = passes(&mut batching, 0, &[4, 4, 4]);
        batching.popped(5, 0);
        assert_eq!(batching.rearm(now + 200 * US, 0), 12);
        assert_eq!(batching.recheck_in(), Some(Duration::from_micros(600)));
        // A single chain keeps a busy queue batching: the driver has more in flight.
        batching.popped(1, 0);
        assert_eq!(batching.rearm(now + 210 * US, 0), 4);
        assert_eq!(batching.recheck_in(), Some(Duration::from_micros(30)));
        batching.popped(200, 0);
        assert_eq!(
            batching.rearm(now + 5_000 * US, 0),
            64,
            "half the queue at most"
        );
        assert_eq!(
            batching.recheck_in(),
            Some(Duration::from_micros(30)),
            "a pass after the re-check was due keeps its delay"
        );
    }

    #[test]
    fn a_busy_queue_looks_again_while_quiet_then_asks_for_the_next_kick() {
        let mut batching = KickBatching::new(128);
        let mut now = passes(&mut batching, 0, &[4, 4, 4]);
        let ahead = batching.rearm(now, 0);
        assert!(ahead > 1);
        let mut waits = Vec::new();
        while batching.recheck_in().is_some() {
            let wait = batching.recheck_in().unwrap();
            waits.push(wait);
            now += u64::try_from(wait.as_nanos()).unwrap();
            assert!(batching.rearm(now, 0) == ahead || batching.recheck_in().is_none());
            assert!(waits.len() < 20, "gives up once quiet for long enough");
        }
        assert!(
            waits.windows(2).all(|w| w[1] >= w[0]),
            "backs off: {waits:?}"
        );
        assert_eq!(batching.rearm(now + US, 0), 1);
    }

    #[test]
    fn the_kick_is_never_asked_for_more_chains_than_the_driver_can_send_unanswered() {
        let mut batching = KickBatching::new(256);
        // A driver at depth 32 that trickles (each look finds four), whose every batch is
        // answered at once.
        let trickle = |batching: &mut KickBatching| {
            for held in (4..=32).step_by(4) {
                batching.popped(4, held);
            }
        };
        let mut now = 0;
        for _ in 0..10 {
            now += 10 * US;
            trickle(&mut batching);
            assert_eq!(batching.rearm(now, 0), 32, "kicked at its 32nd chain");
        }
        // With 20 of them still in flight, it can send 12 more.
        trickle(&mut batching);
        assert_eq!(batching.rearm(now + 10 * US, 20), 12);
        // All in flight: the next chain is kicked for, and no re-check is needed.
        trickle(&mut batching);
        assert_eq!(batching.rearm(now + 20 * US, 32), 1);
        assert_eq!(batching.recheck_in(), None);
    }

    #[test]
    fn a_driver_that_sends_its_window_at_once_is_asked_for_the_next_chain_until_it_trickles() {
        let mut batching = KickBatching::new(256);
        let mut now = 0;
        for _ in 0..10 {
            now += 10 * US;
            batching.popped(32, 32);
            assert_eq!(batching.rearm(now, 0), 1, "it kicks once a window anyway");
            assert_eq!(batching.recheck_in(), None, "and no timer is armed for it");
        }
        // The look after its next kick finds two of its 32: it is batched.
        batching.popped(2, 32);
        batching.popped(6, 32);
        assert_eq!(batching.rearm(now + 10 * US, 0), 18, "2 x 8 + 2");
        assert!(batching.recheck_in().is_some());
    }

    #[test]
    fn a_trickling_driver_is_asked_for_the_next_chain_once_in_32_batches() {
        let mut batching = KickBatching::new(256);
        let mut now = passes(&mut batching, 0, &[4, 4, 4]);
        let mut asked = Vec::new();
        for _ in 0..64 {
            now += 100 * US;
            batching.popped(4, 64);
            asked.push((batching.rearm(now, 0), batching.recheck_in().is_some()));
        }
        let probes: Vec<usize> = (0..asked.len()).filter(|&at| asked[at].0 == 1).collect();
        assert_eq!(probes.len(), 2, "{asked:?}");
        assert_eq!(probes[1] - probes[0], 32, "{asked:?}");
        assert!(
            probes.iter().all(|&at| !asked[at].1),
            "a probe arms no re-check"
        );
        // The look after a probe's kick finds four of the 64 the driver holds: still batched.
        assert!(asked[probes[0] + 1].0 > 1);
    }

    #[test]
    fn a_pass_the_recheck_started_keeps_the_delay() {
        let mut batching = KickBatching::new(128);
        let now = passes(&mut batching, 0, &[4, 4, 4]);
        batching.popped(4, 64);
        batching.rearm(now + 10 * US, 0);
        let delay = batching.recheck_in().unwrap();
        assert_eq!(delay, MIN_RECHECK.max(Duration::from_micros(30)));
        // Each batch now ends at the re-check: the delay does not grow with its own wait.
        let mut at = now + 10 * US;
        for _ in 0..10 {
            at += u64::try_from(delay.as_nanos()).unwrap();
            batching.popped(4, 64);
            batching.rearm(at, 0);
            assert_eq!(batching.recheck_in(), Some(delay));
        }
        // A kick that ends a batch sooner sets it again.
        batching.popped(4, 64);
        batching.rearm(at + 10 * US, 0);
        assert_eq!(batching.recheck_in(), Some(Duration::from_micros(30)));
    }

    #[test]
    fn after_polling_a_busy_queue_asks_for_the_kick_a_batch_ahead_and_a_recheck_at_half_of_it() {
        let mut batching = KickBatching::new(128);
        batching.start_polling();
        assert!(batching.polling());
        assert_eq!(batching.recheck_in(), None, "polling looks by itself");
        // Polls find the chains one by one, from a driver with 40 out: the answers it has not
        // read yet keep it busy although each look finds one chain.
        for _ in 0..8 {
            batching.popped(1, 40);
        }
        assert_eq!(batching.rearm(80 * US, 0), 18, "2 x 8 + 2");
        assert!(!batching.polling());
        assert_eq!(
            batching.recheck_in(),
            Some(Duration::from_micros(90)),
            "nine chains' time at 10 µs a chain"
        );
    }

    #[test]
    fn a_pass_that_stopped_with_chains_left_asks_for_a_look_at_once_until_one_ends_on_an_empty_ring(
    ) {
        let mut batching = KickBatching::new(128);
        let now = passes(&mut batching, 0, &[4, 4, 4]);
        let recheck = batching.recheck_in();
        assert!(recheck.is_some());
        batching.pass_ended(true);
        assert_eq!(batching.recheck_in(), Some(Duration::ZERO));
        assert!(
            batching.may_defer_interrupt(0),
            "a look is coming: the usual deferral rules apply"
        );
        batching.pass_ended(false);
        assert_eq!(batching.recheck_in(), recheck, "the batch's own re-check");
        // A quiet queue has no re-check of its own, but a pass that stopped short still looks.
        let mut quiet = KickBatching::new(128);
        quiet.pass_ended(true);
        assert_eq!(quiet.recheck_in(), Some(Duration::ZERO));
        // Polling looks by itself.
        batching.pass_ended(true);
        batching.start_polling();
        assert_eq!(batching.recheck_in(), None);
        batching.popped(4, 64);
        batching.rearm(now + 10 * US, 0);
        assert_ne!(batching.recheck_in(), Some(Duration::ZERO));
    }

    #[test]
    fn after_polling_a_driver_that_waits_for_each_answer_is_asked_for_every_kick() {
        let mut batching = KickBatching::new(128);
        batching.start_polling();
        for _ in 0..50 {
            batching.popped(1, 1);
        }
        assert_eq!(batching.rearm(5_000 * US, 0), 1);
        assert_eq!(batching.recheck_in(), None);
    }
}

/// The mechanism end to end: a request queue served through the inline host, with a driver
/// that kicks only when Linux's would.
#[cfg(test)]
mod through_the_inline_host {
    use std::collections::VecDeque;
    use std::os::fd::BorrowedFd;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use block::{BlockError, Completion, Disk, Engine, IoRequest, Submitted, SyncEngine};
    use virtio_bindings::virtio_ring::VRING_USED_F_NO_NOTIFY;
    use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};
    use vmm_sys_util::eventfd::EventFd;

    use super::MAX_RECHECK;
    use crate::features::RING_EVENT_IDX;
    use crate::scsi_device::test_driver::{lun_config, lun_field, CountingInterrupt, Harness};
    use crate::virtio_device::VirtioDevice;

    const VQ: usize = 2;
    const TEST_UNIT_READY: [u8; 6] = [0; 6];
    /// A command that goes to the engine, which a null disk finishes inside `submit`.
    const SYNCHRONIZE_CACHE: [u8; 10] = [0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0];

    /// Linux's `vring_need_event`: whether a driver that moved its avail idx from `old` to
    /// `new` since its last kick kicks now.
    fn driver_kicks(avail_event: u16, new: u16, old: u16) -> bool {
        new.wrapping_sub(avail_event).wrapping_sub(1) < new.wrapping_sub(old)
    }

    /// Makes `count` commands available one by one, as a driver that looks at `avail_event`
    /// after each does; returns how many of them it would have kicked for.
    fn publish(harness: &mut Harness, count: u16) -> usize {
        let mut kicks = 0;
        for tag in 0..count {
            let bufs = [
                harness.request_buf(VQ, lun_field(0), u64::from(tag), &TEST_UNIT_READY),
                harness.response_buf(VQ, 108),
            ];
            let head = harness.queues[VQ].chain(&bufs);
            let old = harness.queues[VQ].avail_idx();
            harness.queues[VQ].publish(head);
            let event = harness.queues[VQ].avail_event();
            kicks += usize::from(driver_kicks(event, old.wrapping_add(1), old));
        }
        kicks
    }

    /// Waits past the longest re-check and serves what is due.
    fn after_a_recheck(harness: &mut Harness) -> usize {
        std::thread::sleep(MAX_RECHECK * 3);
        harness.host.serve_ready().unwrap();
        harness.queues[VQ].used().len()
    }

    /// The next chain is kicked for, and nothing serves it without the kick.
    fn asks_for_the_kick_of_the_next_chain_and_for_no_recheck(harness: &mut Harness) {
        let queue = &harness.queues[VQ];
        assert_eq!(
            queue.avail_event(),
            queue.avail_idx(),
            "the next chain is kicked for"
        );
        assert_eq!(publish(harness, 1), 1);
        assert_eq!(after_a_recheck(harness), 0, "no re-check was asked for");
    }

    fn ready_harness(features: impl FnOnce(u64) -> u64) -> Harness {
        let mut harness = Harness::new(vec![Disk::null(1 << 20, 512).unwrap()]);
        harness.device.reset();
        harness.activate(features(harness.device.features()));
        // The power-on unit attention, and a lone command: the next chain is kicked for.
        harness.command(0, &TEST_UNIT_READY, &[], 0);
        harness
    }

    #[test]
    fn lone_commands_never_wait_for_a_recheck() {
        let mut harness = ready_harness(|features| features);
        for _ in 0..20 {
            assert_eq!(publish(&mut harness, 1), 1, "the driver kicks for each");
            harness.notify(VQ);
            assert_eq!(harness.queues[VQ].used().len(), 1);
        }
        // Two at once now and then (two depth-1 drivers on one queue) are no load either.
        publish(&mut harness, 2);
        harness.notify(VQ);
        assert_eq!(harness.queues[VQ].used().len(), 2);
        asks_for_the_kick_of_the_next_chain_and_for_no_recheck(&mut harness);
        harness.notify(VQ);
        assert_eq!(harness.queues[VQ].used().len(), 1);
    }

    #[test]
    fn a_batch_moves_the_kick_a_batch_ahead_and_a_shorter_one_is_served_by_the_recheck() {
        let mut harness = trickling_harness();
        assert_eq!(publish(&mut harness, 3), 0, "three of six: no kick");
        assert_eq!(after_a_recheck(&mut harness), 3, "served without a kick");
        assert_eq!(
            publish(&mut harness, 8),
            1,
            "a batch ahead again, no more than the driver can send: kicked once"
        );
        harness.notify(VQ);
        assert_eq!(harness.queues[VQ].used().len(), 8);
    }

    /// A driver that has had ten chains with the device and now trickles: the look after its
    /// kick finds two. The kick is asked for a batch ahead, with a re-check.
    fn trickling_harness() -> Harness {
        let mut harness = ready_harness(|features| features);
        // Eight at once, whose answers the driver has not read yet: it holds eight.
        publish(&mut harness, 8);
        harness.notify(VQ);
        assert_eq!(publish(&mut harness, 2), 1, "the next chain is kicked for");
        harness.notify(VQ);
        assert_eq!(harness.queues[VQ].used().len(), 10);
        let queue = &harness.queues[VQ];
        assert_eq!(
            queue.avail_event(),
            queue.avail_idx().wrapping_add(5),
            "2 x 2 + 2: the sixth"
        );
        harness
    }

    #[test]
    fn a_driver_that_sends_its_window_at_once_is_asked_for_the_next_chain_and_no_recheck() {
        let mut harness = ready_harness(|features| features);
        for round in 0..10 {
            assert_eq!(publish(&mut harness, 8), 1, "round {round}: one kick");
            harness.notify(VQ);
            assert_eq!(harness.queues[VQ].used().len(), 8);
        }
        asks_for_the_kick_of_the_next_chain_and_for_no_recheck(&mut harness);
        harness.notify(VQ);
        assert_eq!(harness.queues[VQ].used().len(), 1);
        // That look found one chain of the eight the driver has had: it trickles, and is
        // batched from then on.
        assert_eq!(
            publish(&mut harness, 3),
            0,
            "2 x 1 + 2: three of four, no kick"
        );
        assert_eq!(after_a_recheck(&mut harness), 3, "served by the re-check");
    }

    #[test]
    fn a_quiet_queue_asks_for_the_next_kick_and_for_no_more_rechecks() {
        let mut harness = trickling_harness();
        // Re-checks that find nothing, for longer than the quiet limit.
        assert_eq!(after_a_recheck(&mut harness), 0);
        let queue = &harness.queues[VQ];
        assert_eq!(
            queue.avail_event(),
            queue.avail_idx(),
            "kick for the next chain"
        );
        // The queue now sleeps until kicked: the chain waits for its kick, not for a timer.
        assert_eq!(publish(&mut harness, 1), 1);
        assert_eq!(after_a_recheck(&mut harness), 0, "no timer left running");
        harness.notify(VQ);
        assert_eq!(harness.queues[VQ].used().len(), 1);
    }

    #[test]
    fn after_polling_a_busy_queue_keeps_kicks_off_a_batch_ahead_and_the_recheck_serves_less() {
        let mut harness = ready_harness(|features| features);
        let host = harness.host.clone();
        host.start_polling().unwrap();
        // Polls find the chains one by one; the driver reads none of the answers yet.
        let mut kicks = 0;
        for _ in 0..8 {
            kicks += publish(&mut harness, 1);
            assert!(host.poll());
        }
        assert!(kicks <= 1, "once past avail_event, no kick while polled");
        host.stop_polling().unwrap();
        let queue = &harness.queues[VQ];
        assert_eq!(
            queue.avail_event(),
            queue.avail_idx().wrapping_add(7),
            "2 x 8 + 2, but the driver held no more than 8: the eighth"
        );
        assert_eq!(harness.queues[VQ].used().len(), 8);
        assert_eq!(publish(&mut harness, 3), 0, "three of eight: no kick");
        assert_eq!(after_a_recheck(&mut harness), 3, "served without a kick");
        assert_eq!(harness.device.queue_stats()[0].rechecks, 1);
    }

    /// A polling host and a driver that makes `count` chains available one by one, each
    /// found by a poll, and reads its answers eight at a time; the host looks at its eventfds
    /// after each eight, as an iothread whose polls find work does every 50 µs. Returns the
    /// kicks the driver sent meanwhile.
    fn trickle_while_polling(harness: &mut Harness, count: usize) -> usize {
        let host = harness.host.clone();
        let mut kicks = 0;
        for chain in 1..=count {
            let kicked = publish(harness, 1);
            if kicked > 0 {
                harness.kick(VQ);
            }
            kicks += kicked;
            assert!(host.poll(), "polling finds each chain");
            if chain % 8 == 0 {
                harness.queues[VQ].used();
                host.serve_ready().unwrap();
            }
        }
        kicks
    }

    #[test]
    fn a_driver_that_keeps_chains_coming_while_the_host_polls_never_kicks() {
        let mut harness = trickling_harness();
        harness.host.start_polling().unwrap();
        assert_eq!(trickle_while_polling(&mut harness, 200), 0);
        assert_eq!(harness.device.queue_stats()[0].rechecks, 0);
        // Polling ends in vain: notifications are back on.
        harness.host.stop_polling().unwrap();
        let queue = &harness.queues[VQ];
        assert_ne!(queue.avail_event(), queue.avail_idx().wrapping_sub(1));
    }

    #[test]
    fn a_kick_sent_before_polling_started_is_served_as_a_poll_and_turns_no_kick_on() {
        let mut harness = trickling_harness();
        // The driver sends that batch; its kick is still in the notifier when polling starts.
        assert_eq!(publish(&mut harness, 6), 1);
        let counted = harness.device.queue_stats()[0].kicks;
        harness.kick(VQ);
        harness.host.start_polling().unwrap();
        assert_eq!(trickle_while_polling(&mut harness, 200), 0);
        assert_eq!(harness.device.queue_stats()[0].kicks, counted + 1);
    }

    /// A driver on another vCPU that sends the chains staged in the avail ring while a pass
    /// runs, `per_batch` more for each batch of requests the pass hands its engine (at a
    /// steady pace), and kicks as Linux's does.
    struct DriverAlongside {
        mem: &'static GuestMemoryMmap,
        avail_idx: GuestAddress,
        avail_event: GuestAddress,
        staged_to: u16,
        per_batch: u16,
        kicks: usize,
    }

    /// A driver that sends chains while a pass runs, whenever the pass hands its engine a batch.
    trait SendsDuringAPass: Send {
        fn send(&mut self);
    }

    impl SendsDuringAPass for DriverAlongside {
        fn send(&mut self) {
            let old: u16 = self.mem.read_obj(self.avail_idx).unwrap();
            let left = self.staged_to.wrapping_sub(old);
            let new = old.wrapping_add(self.per_batch.min(left));
            self.mem.write_obj(new, self.avail_idx).unwrap();
            let event: u16 = self.mem.read_obj(self.avail_event).unwrap();
            self.kicks += usize::from(driver_kicks(event, new, old));
        }
    }

    /// A synchronous engine whose every batch of requests lets the driver alongside send more.
    struct EngineBesideADriver<D> {
        engine: SyncEngine,
        driver: Arc<Mutex<Option<D>>>,
        batch: bool,
    }

    /// What `Engine::submit` answers.
    type Accepted = Result<Submitted, BlockError>;

    impl<D: SendsDuringAPass> Engine for EngineBesideADriver<D> {
        fn submit(&mut self, disk: &Arc<Disk>, request: IoRequest, user_data: u64) -> Accepted {
            self.batch = true;
            self.engine.submit(disk, request, user_data)
        }
        fn submit_pending(&mut self) {
            if std::mem::take(&mut self.batch) {
                if let Some(driver) = self.driver.lock().unwrap().as_mut() {
                    driver.send();
                }
            }
            self.engine.submit_pending();
        }
        fn completion_fd(&self) -> Option<BorrowedFd<'_>> {
            self.engine.completion_fd()
        }
        fn reap(&mut self, out: &mut Vec<Completion>) {
            self.engine.reap(out);
        }
    }

    #[test]
    fn a_pass_asks_for_the_next_kick_once_the_ring_is_empty_not_while_the_driver_sends() {
        let driver = Arc::new(Mutex::new(None));
        let engines_driver = Arc::clone(&driver);
        let disk = Disk::null(1 << 20, 512).unwrap();
        let mut harness = Harness::with_engines(
            vec![(lun_config(0, &disk), Arc::new(disk))],
            1,
            0,
            Arc::new(move || {
                Ok(Box::new(EngineBesideADriver {
                    engine: SyncEngine::new()?,
                    driver: Arc::clone(&engines_driver),
                    batch: false,
                }))
            }),
        );
        harness.command(0, &TEST_UNIT_READY, &[], 0);
        // A busy queue: its driver sends eight at a time.
        for _ in 0..4 {
            publish(&mut harness, 8);
            harness.notify(VQ);
            assert_eq!(harness.queues[VQ].used().len(), 8);
        }
        // A batch of eight, kicked for, then twenty that the driver sends while the pass runs,
        // four for each batch the pass starts.
        for ahead in 0..28 {
            let bufs = [
                harness.request_buf(VQ, lun_field(0), 100, &SYNCHRONIZE_CACHE),
                harness.response_buf(VQ, 108),
            ];
            let head = harness.queues[VQ].chain(&bufs);
            harness.queues[VQ].stage(head, ahead);
        }
        let queue = &harness.queues[VQ];
        let first = queue.avail_idx();
        *driver.lock().unwrap() = Some(DriverAlongside {
            mem: harness.mem,
            avail_idx: GuestAddress(queue.mock.avail_addr().0 + 2),
            avail_event: queue.avail_event_addr(),
            staged_to: first.wrapping_add(28),
            per_batch: 4,
            kicks: 0,
        });
        let batch = first.wrapping_add(8);
        assert!(driver_kicks(queue.avail_event(), batch, first));
        harness
            .mem
            .write_obj(batch, GuestAddress(queue.mock.avail_addr().0 + 2))
            .unwrap();
        harness.notify(VQ);
        assert_eq!(harness.queues[VQ].used().len(), 28, "one pass served all");
        let kicks = driver.lock().unwrap().as_ref().map(|d| d.kicks);
        assert_eq!(kicks, Some(0), "kicks while the pass ran");
    }

    /// A driver on another vCPU that never stops sending while the device answers: whenever a
    /// pass hands its engine a batch, it takes back the chains answered so far and makes
    /// `per_batch` of them available again, kicking as Linux's does, until it has sent `limit`.
    /// It does not move `used_event` (Linux's does not while it processes answers with
    /// callbacks off), and notes what it saw of the device meanwhile.
    struct StreamingDriver {
        mem: &'static GuestMemoryMmap,
        size: u16,
        avail: GuestAddress,
        used: GuestAddress,
        avail_event: GuestAddress,
        event_idx: bool,
        /// Chain heads the device answered, not yet sent again.
        free: VecDeque<u16>,
        used_seen: u16,
        per_batch: usize,
        sent: usize,
        limit: usize,
        kicks: usize,
        interrupt: Arc<CountingInterrupt>,
        interrupts_seen: usize,
        /// Chains sent when the first interrupt was seen (at the first send after it).
        sent_when_interrupted: Option<usize>,
        /// Chains sent when the last interrupt was seen, and the most sent between two.
        sent_at_last_interrupt: usize,
        most_between_interrupts: usize,
        /// Another queue's used idx, and the chains sent when it first moved.
        other_used_idx: Option<GuestAddress>,
        sent_when_other_answered: Option<usize>,
        /// A notifier the driver writes at its first send (a kick of another queue).
        kick_at_first_send: Option<Arc<EventFd>>,
    }

    impl StreamingDriver {
        /// Makes up to `count` answered chains available again, with one avail idx store.
        fn publish(&mut self, count: usize) {
            let ring = |idx: u16| GuestAddress(self.avail.0 + 4 + 2 * u64::from(idx % self.size));
            let idx_at = GuestAddress(self.avail.0 + 2);
            let old: u16 = self.mem.read_obj(idx_at).unwrap();
            let count = count.min(self.free.len()).min(self.limit - self.sent);
            for k in 0..count as u16 {
                let head = self.free.pop_front().unwrap();
                self.mem.write_obj(head, ring(old.wrapping_add(k))).unwrap();
            }
            let new = old.wrapping_add(count as u16);
            self.mem.write_obj(new, idx_at).unwrap();
            self.sent += count;
            let kicks = if self.event_idx {
                let event: u16 = self.mem.read_obj(self.avail_event).unwrap();
                driver_kicks(event, new, old)
            } else {
                let flags: u16 = self.mem.read_obj(self.used).unwrap();
                count > 0 && flags & VRING_USED_F_NO_NOTIFY as u16 == 0
            };
            self.kicks += usize::from(kicks);
        }

        /// The most chains sent between two interrupts, the stretch after the last one
        /// included.
        fn longest_stretch_without_an_interrupt(&self) -> usize {
            let last = self.sent - self.sent_at_last_interrupt;
            self.most_between_interrupts.max(last)
        }

        /// Asserts that the driver saw `what` when it had sent `seen_at`, at most `most`.
        fn saw_it_within(&self, seen_at: Option<usize>, most: usize, what: &str) {
            assert!(
                seen_at.is_some_and(|sent| sent <= most),
                "{what} came after {seen_at:?} of the stream's {} chains",
                self.limit
            );
        }

        /// Takes back the chains the device answered.
        fn take_answers(&mut self) {
            let idx: u16 = self.mem.read_obj(GuestAddress(self.used.0 + 2)).unwrap();
            while self.used_seen != idx {
                let entry = self.used.0 + 4 + 8 * u64::from(self.used_seen % self.size);
                let head: u32 = self.mem.read_obj(GuestAddress(entry)).unwrap();
                self.free.push_back(head as u16);
                self.used_seen = self.used_seen.wrapping_add(1);
            }
        }
    }

    impl SendsDuringAPass for StreamingDriver {
        fn send(&mut self) {
            if let Some(notifier) = self.kick_at_first_send.take() {
                notifier.write(1).unwrap();
            }
            let interrupts = self.interrupt.count();
            if interrupts != self.interrupts_seen {
                self.interrupts_seen = interrupts;
                self.sent_when_interrupted.get_or_insert(self.sent);
                let stretch = self.sent - self.sent_at_last_interrupt;
                self.most_between_interrupts = self.most_between_interrupts.max(stretch);
                self.sent_at_last_interrupt = self.sent;
            }
            if let Some(at) = self.other_used_idx {
                let other: u16 = self.mem.read_obj(GuestAddress(at.0 + 2)).unwrap();
                if other != 0 {
                    self.sent_when_other_answered.get_or_insert(self.sent);
                }
            }
            self.take_answers();
            self.publish(self.per_batch);
        }
    }

    type Streaming = Arc<Mutex<Option<StreamingDriver>>>;

    /// A device with `queues` request queues whose first one's driver streams: 32 chains of
    /// SYNCHRONIZE CACHE, of which it sends 8 and kicks, then 4 more at every batch a pass
    /// hands the engine, `limit` in all after the first 8. The queue asked for no re-check
    /// before: every look the host makes by itself is one a pass asked for. Returns once the
    /// driver kicked for its first 8.
    fn streaming(
        queues: u16,
        features: impl FnOnce(u64) -> u64,
        limit: usize,
    ) -> (Harness, Streaming) {
        let driver: Streaming = Arc::new(Mutex::new(None));
        let engines_driver = Arc::clone(&driver);
        let engines_made = Arc::new(AtomicUsize::new(0));
        let disk = Disk::null(1 << 20, 512).unwrap();
        let mut harness = Harness::with_engines(
            vec![(lun_config(0, &disk), Arc::new(disk))],
            queues,
            0,
            Arc::new(move || {
                // Only the first request queue's engine (of each activation) sends for the
                // driver.
                let mine = engines_made.fetch_add(1, Ordering::SeqCst) % usize::from(queues) == 0;
                Ok(Box::new(EngineBesideADriver {
                    engine: SyncEngine::new()?,
                    driver: if mine {
                        Arc::clone(&engines_driver)
                    } else {
                        Arc::new(Mutex::new(None))
                    },
                    batch: false,
                }))
            }),
        );
        harness.device.reset();
        let features = features(harness.device.features());
        harness.activate(features);
        harness.command(0, &TEST_UNIT_READY, &[], 0);
        let free = (0..32)
            .map(|tag| {
                let bufs = [
                    harness.request_buf(VQ, lun_field(0), tag, &SYNCHRONIZE_CACHE),
                    harness.response_buf(VQ, 108),
                ];
                harness.queues[VQ].chain(&bufs)
            })
            .collect();
        let queue = &harness.queues[VQ];
        let mut stream = StreamingDriver {
            mem: harness.mem,
            size: 64,
            avail: queue.mock.avail_addr(),
            used: queue.used_addr(),
            avail_event: queue.avail_event_addr(),
            event_idx: features & RING_EVENT_IDX != 0,
            free,
            used_seen: harness
                .mem
                .read_obj(queue.used_addr().unchecked_add(2))
                .unwrap(),
            per_batch: 4,
            sent: 0,
            limit: limit + 8,
            kicks: 0,
            interrupt: Arc::clone(&queue.interrupt),
            interrupts_seen: queue.interrupt.count(),
            sent_when_interrupted: None,
            sent_at_last_interrupt: 0,
            most_between_interrupts: 0,
            other_used_idx: None,
            sent_when_other_answered: None,
            kick_at_first_send: None,
        };
        stream.publish(8);
        assert_eq!(stream.kicks, 1, "the first eight are kicked for");
        stream.kicks = 0;
        *driver.lock().unwrap() = Some(stream);
        (harness, driver)
    }

    /// Kicks the streaming queue, then lets its host look until the driver sent everything and
    /// had it answered (or 5 s passed); returns the driver.
    fn serve_the_stream(harness: &mut Harness, driver: &Streaming) -> StreamingDriver {
        harness.kick(VQ);
        let start = Instant::now();
        loop {
            harness.host.serve_ready().unwrap();
            let done = driver.lock().unwrap().as_ref().map(|d| {
                let used_idx: u16 = harness.mem.read_obj(d.used.unchecked_add(2)).unwrap();
                let answered = usize::from(used_idx.wrapping_sub(d.used_seen));
                d.sent == d.limit && d.free.len() + answered == 32
            });
            if done == Some(true) || start.elapsed() > Duration::from_secs(5) {
                return driver.lock().unwrap().take().unwrap();
            }
            std::thread::sleep(Duration::from_micros(100));
        }
    }

    #[test]
    fn a_driver_that_never_stops_sending_cannot_keep_one_pass_going_beyond_the_queue_size() {
        const LIMIT: usize = 512;
        // Without EVENT_IDX every pass that answers interrupts: the interrupts mark the passes.
        let (mut harness, driver) = streaming(1, |features| features & !RING_EVENT_IDX, LIMIT);
        let stream = serve_the_stream(&mut harness, &driver);
        assert_eq!(stream.sent, LIMIT + 8);
        assert_eq!(harness.queues[VQ].used().len(), LIMIT + 8, "all answered");
        assert_eq!(stream.kicks, 0, "kicks while the driver streamed");
        // A pass serves whole rounds of 4 and stops once it started 64 (the queue size); the
        // driver sees its interrupt at its next send, a round later.
        let longest = stream.longest_stretch_without_an_interrupt();
        assert!(
            longest <= 64 + 2 * 4,
            "one pass served {longest} of the stream's {} chains",
            stream.limit
        );
    }

    #[test]
    fn chains_a_bounded_pass_left_are_served_by_the_hosts_next_look_without_a_kick() {
        // The driver stops after 64 + 8: the kicked pass stops at 64 with chains left.
        let (mut harness, driver) = streaming(1, |features| features & !RING_EVENT_IDX, 64);
        let kicks = harness.device.queue_stats()[0].kicks;
        let stream = serve_the_stream(&mut harness, &driver);
        assert_eq!(harness.queues[VQ].used().len(), 64 + 8, "all answered");
        assert_eq!(stream.kicks, 0, "kicks for the chains left");
        assert_eq!(
            harness.device.queue_stats()[0].kicks,
            kicks + 1,
            "the stream's one kick"
        );
        assert!(
            stream.sent_when_interrupted.is_some(),
            "the kicked pass ended before the driver stopped"
        );
    }

    #[test]
    fn a_second_queue_on_the_host_is_served_while_the_first_queues_driver_streams() {
        const LIMIT: usize = 1024;
        let (mut harness, driver) = streaming(2, |features| features, LIMIT);
        // The other queue's driver sends one command and kicks while the first pass runs.
        let other = VQ + 1;
        let bufs = [
            harness.request_buf(other, lun_field(0), 1, &TEST_UNIT_READY),
            harness.response_buf(other, 108),
        ];
        let head = harness.queues[other].chain(&bufs);
        harness.queues[other].publish(head);
        if let Some(stream) = driver.lock().unwrap().as_mut() {
            stream.other_used_idx = Some(harness.queues[other].used_addr());
            stream.kick_at_first_send = Some(Arc::clone(harness.queues[other].notifier()));
        }
        let stream = serve_the_stream(&mut harness, &driver);
        assert_eq!(harness.queues[other].used().len(), 1);
        let answered_at = stream.sent_when_other_answered;
        stream.saw_it_within(answered_at, 3 * 64, "the other queue's answer");
    }

    #[test]
    fn a_bounded_pass_sends_the_interrupt_it_owes() {
        const LIMIT: usize = 512;
        let (mut harness, driver) = streaming(1, |features| features, LIMIT);
        // The driver wants an interrupt for the next answer, and reads none while it streams.
        let seen = harness.queues[VQ].used().len();
        assert_eq!(seen, 0);
        let stream = serve_the_stream(&mut harness, &driver);
        stream.saw_it_within(stream.sent_when_interrupted, 2 * 64, "the interrupt");
    }

    #[test]
    fn after_polling_a_driver_that_waits_for_each_answer_kicks_for_every_chain() {
        let mut harness = ready_harness(|features| features);
        let host = harness.host.clone();
        host.start_polling().unwrap();
        for _ in 0..20 {
            publish(&mut harness, 1);
            assert!(host.poll());
            assert_eq!(harness.queues[VQ].used().len(), 1, "read at once");
        }
        host.stop_polling().unwrap();
        asks_for_the_kick_of_the_next_chain_and_for_no_recheck(&mut harness);
    }

    #[test]
    fn a_deferred_interrupt_is_sent_by_the_next_look_that_finds_no_new_chain() {
        let mut harness = ready_harness(|features| features);
        // The driver has held five at once...
        publish(&mut harness, 5);
        harness.notify(VQ);
        assert_eq!(harness.queues[VQ].used().len(), 5);
        let interrupts = harness.queues[VQ].interrupt.count();
        // ...so with one out it can send as many again: the answer waits for the next look.
        publish(&mut harness, 1);
        harness.notify(VQ);
        assert_eq!(harness.queues[VQ].interrupt.count(), interrupts, "deferred");
        assert_eq!(harness.device.queue_stats()[0].interrupts_deferred, 1);
        assert_eq!(after_a_recheck(&mut harness), 1, "answered at once");
        assert_eq!(
            harness.queues[VQ].interrupt.count(),
            interrupts + 1,
            "sent by the re-check"
        );
    }

    #[test]
    fn a_driver_that_waits_for_each_answer_is_never_kept_waiting_for_its_interrupt() {
        let mut harness = ready_harness(|features| features);
        for _ in 0..20 {
            let interrupts = harness.queues[VQ].interrupt.count();
            publish(&mut harness, 1);
            harness.notify(VQ);
            assert_eq!(harness.queues[VQ].interrupt.count(), interrupts + 1);
            harness.queues[VQ].used();
        }
        assert_eq!(harness.device.queue_stats()[0].interrupts_deferred, 0);
    }

    #[test]
    fn without_event_idx_a_batch_turns_kicks_off_until_the_queue_is_quiet() {
        let mut harness = ready_harness(|features| features & !RING_EVENT_IDX);
        assert_eq!(harness.queues[VQ].used_flags(), 0);
        publish(&mut harness, 8);
        harness.notify(VQ);
        assert_eq!(harness.queues[VQ].used().len(), 8);
        assert_eq!(
            harness.queues[VQ].used_flags(),
            0,
            "a window at once: the driver kicks once for it anyway"
        );
        // The look after its kick finds two of the eight it has had: it trickles.
        publish(&mut harness, 2);
        harness.notify(VQ);
        assert_eq!(harness.queues[VQ].used().len(), 2);
        assert_eq!(
            harness.queues[VQ].used_flags(),
            VRING_USED_F_NO_NOTIFY as u16
        );
        publish(&mut harness, 3);
        assert_eq!(after_a_recheck(&mut harness), 3, "served without a kick");
        assert_eq!(after_a_recheck(&mut harness), 0);
        assert_eq!(harness.queues[VQ].used_flags(), 0, "quiet: kicks back on");
    }
}
