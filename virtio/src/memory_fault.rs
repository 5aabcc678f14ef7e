//! Surviving guest memory that vanishes under the device.
//!
//! Guest memory is the client's file mapped into this process. A client can shrink that file
//! after mapping it (a memfd without `F_SEAL_SHRINK`, an ordinary file), and the next access to
//! a page past the new end raises SIGBUS, whose default action kills the whole server. As QEMU
//! does for shrunken RAM, a SIGBUS handler turns such a fault into an error of the thread that
//! made it: the faulting page is replaced with an anonymous zero page so that the access can
//! complete, and the thread's fault count goes up. [`FaultScope`] brackets the code that may
//! touch guest memory and tells afterwards whether it faulted; [`GuardedWorker`] serves a queue
//! inside one and stops the queue (DEVICE_NEEDS_RESET) when it did.
//!
//! Only queue workers touch guest memory (the rings, descriptors and data buffers); the I/O
//! engines pass guest buffers to the kernel, which reports EFAULT instead of raising a signal.
//! A SIGBUS outside a scope, or one that another process sent, keeps its default action.
//!
//! Memory that cannot shrink (a memfd sealed with `F_SEAL_SHRINK`, as QEMU's memfd backend makes
//! by default, or a device) cannot fault this way: until a client maps memory that can,
//! [`ShrinkableMemory`] lets the workers skip the scope.

use std::cell::Cell;
use std::io;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use slog::{warn, Logger};
use vmm_sys_util::eventfd::EventFd;

use crate::queue_worker::QueueWorker;

thread_local! {
    // Both are const-initialised `Cell`s of plain integers with no destructor: they live in the
    // thread's static TLS block, so the signal handler reads and writes them without any lazy
    // initialisation, allocation or lock, which keeps it async-signal-safe.
    /// How many scopes the thread is inside.
    static SCOPE_DEPTH: Cell<u32> = const { Cell::new(0) };
    /// Guest memory faults the handler absorbed on this thread.
    static FAULTS: Cell<u64> = const { Cell::new(0) };
}

/// The page size, read once before the handler can run (sysconf is not async-signal-safe).
static PAGE_SIZE: AtomicUsize = AtomicUsize::new(0);
static INSTALLED: OnceLock<Result<(), i32>> = OnceLock::new();

/// Installs the SIGBUS handler, once per process.
pub fn install_handler() -> io::Result<()> {
    let result = INSTALLED.get_or_init(|| {
        // SAFETY: sysconf only reads a system constant.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        PAGE_SIZE.store(usize::try_from(page).unwrap_or(4096), Ordering::SeqCst);
        // SAFETY: an all-zero sigaction is a valid empty one; every field we rely on is set.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = on_sigbus as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO;
        // SAFETY: sa_mask is a sigset_t inside `action`; sigemptyset initialises it.
        unsafe { libc::sigemptyset(&mut action.sa_mask) };
        // SAFETY: `action` is fully initialised and `on_sigbus` only makes async-signal-safe
        // calls (mmap, signal, raise) and touches static TLS.
        match unsafe { libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut()) } {
            0 => Ok(()),
            _ => Err(io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EINVAL)),
        }
    });
    result.map_err(io::Error::from_raw_os_error)
}

extern "C" fn on_sigbus(signal: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel hands an SA_SIGINFO handler a valid siginfo for this signal.
    let (code, address) = unsafe { ((*info).si_code, (*info).si_addr() as usize) };
    // si_code > 0: the kernel raised it for a memory access (BUS_ADRERR past a file's end).
    let absorbed = code > 0 && SCOPE_DEPTH.with(Cell::get) > 0 && replace_page(address);
    if absorbed {
        FAULTS.with(|faults| faults.set(faults.get() + 1));
        return;
    }
    // SAFETY: signal() and raise() are async-signal-safe. With the default action back, the
    // signal kills the process as if no handler had been there: sent again for one another
    // process sent, or raised again by the faulting instruction when it is retried.
    unsafe {
        libc::signal(signal, libc::SIG_DFL);
        if code <= 0 {
            libc::raise(signal);
        }
    }
}

/// Huge page sizes to try when a base page cannot be replaced: a hugetlbfs mapping (QEMU's
/// `memory-backend-file` on /dev/hugepages) can only be split at its own page boundaries.
const HUGE_PAGE_SIZES: [usize; 2] = [2 << 20, 1 << 30];

/// Maps a private zero page over the page at `address`, so that a retried access succeeds.
fn replace_page(address: usize) -> bool {
    let base = PAGE_SIZE.load(Ordering::Relaxed);
    if base == 0 {
        return false;
    }
    [base]
        .into_iter()
        .chain(HUGE_PAGE_SIZES)
        .any(|page_size| map_zero_page(address & !(page_size - 1), page_size))
}

fn map_zero_page(page: usize, page_size: usize) -> bool {
    // SAFETY: mmap is a system call without locks, safe in a signal handler. The page belongs
    // to a guest memory mapping (the faulting access was inside a FaultScope, whose code
    // touches no other file mapping) that outlives the access, since the accessor holds a
    // snapshot of guest memory; MAP_FIXED swaps the page in place and that mapping's munmap
    // later removes it with the rest. A size that does not fit the mapping's pages fails and
    // changes nothing.
    let mapped = unsafe {
        libc::mmap(
            page as *mut libc::c_void,
            page_size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
            -1,
            0,
        )
    };
    mapped != libc::MAP_FAILED
}

/// Code between `enter` and the scope's end may touch guest memory: a fault there is absorbed
/// and counted instead of killing the process.
pub struct FaultScope {
    faults_at_entry: u64,
}

impl FaultScope {
    /// Requires [`install_handler`] to have succeeded for faults to be absorbed.
    pub fn enter() -> FaultScope {
        SCOPE_DEPTH.with(|depth| depth.set(depth.get() + 1));
        FaultScope {
            faults_at_entry: FAULTS.with(Cell::get),
        }
    }

    /// Whether guest memory faulted since the scope began.
    pub fn faulted(&self) -> bool {
        // The handler runs on this thread between two of its instructions; the fence keeps
        // the compiler from reusing a count read before the accesses.
        std::sync::atomic::compiler_fence(Ordering::SeqCst);
        FAULTS.with(Cell::get) != self.faults_at_entry
    }
}

impl Drop for FaultScope {
    fn drop(&mut self) {
        SCOPE_DEPTH.with(|depth| depth.set(depth.get() - 1));
    }
}

/// Whether guest memory that can shrink under the device has been mapped. Once it has, the
/// workers guard every call for the rest of the device's life: requests may still hold that
/// memory after it is unmapped.
#[derive(Debug, Clone, Default)]
pub struct ShrinkableMemory(Arc<AtomicBool>);

impl ShrinkableMemory {
    /// Memory that can shrink is about to be mapped. No worker may be inside a call meanwhile
    /// (the caller pauses them), so that each sees the flag before it can reach that memory.
    pub fn mapped(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn present(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// A queue worker whose every call runs inside a [`FaultScope`] once shrinkable memory exists. After a fault the queue takes
/// no new requests (its memory is gone or zeroed), finishes those in flight, and `on_fault`
/// asks the driver for a reset.
pub struct GuardedWorker {
    inner: Box<dyn QueueWorker>,
    on_fault: Arc<dyn Fn() + Send + Sync>,
    shrinkable: ShrinkableMemory,
    faulted: bool,
    logger: Logger,
}

impl GuardedWorker {
    pub fn new(
        inner: Box<dyn QueueWorker>,
        on_fault: Arc<dyn Fn() + Send + Sync>,
        shrinkable: ShrinkableMemory,
        logger: &Logger,
    ) -> GuardedWorker {
        let logger = logger.new(slog::o!("vq" => inner.queue_index()));
        GuardedWorker {
            inner,
            on_fault,
            shrinkable,
            faulted: false,
            logger,
        }
    }

    fn guarded<T>(&mut self, call: impl FnOnce(&mut dyn QueueWorker) -> T) -> T {
        if !self.shrinkable.present() {
            return call(&mut *self.inner);
        }
        let scope = FaultScope::enter();
        let result = call(&mut *self.inner);
        if scope.faulted() && !self.faulted {
            self.faulted = true;
            warn!(self.logger, "guest memory vanished under the queue";
                "reason" => "the client shrank a mapped file", "action" => "queue stopped, device needs reset");
            (self.on_fault)();
        }
        result
    }

    /// Calls `call` unless the queue faulted before.
    fn serving<T>(&mut self, idle: T, call: impl FnOnce(&mut dyn QueueWorker) -> T) -> T {
        if self.faulted {
            return idle;
        }
        self.guarded(call)
    }
}

impl QueueWorker for GuardedWorker {
    fn queue_index(&self) -> u16 {
        self.inner.queue_index()
    }

    fn notifier(&self) -> &Arc<EventFd> {
        self.inner.notifier()
    }

    fn notifier_ready(&mut self) {
        self.serving((), |worker| worker.notifier_ready());
    }

    fn completion_fd(&self) -> Option<BorrowedFd<'_>> {
        self.inner.completion_fd()
    }

    // Requests in flight still complete after a fault, so that a reset can wait for them.
    fn completions_ready(&mut self) {
        self.guarded(|worker| worker.completions_ready());
    }

    fn in_flight(&self) -> usize {
        self.inner.in_flight()
    }

    fn start_polling(&mut self) {
        self.serving((), |worker| worker.start_polling());
    }

    fn poll(&mut self) -> bool {
        self.serving(false, |worker| worker.poll())
    }

    fn stop_polling(&mut self) {
        self.serving((), |worker| worker.stop_polling());
    }

    fn serve_waiting(&mut self) -> bool {
        self.serving(false, |worker| worker.serve_waiting())
    }

    fn recheck_in(&self) -> Option<std::time::Duration> {
        if self.faulted {
            return None;
        }
        self.inner.recheck_in()
    }

    fn recheck(&mut self) {
        self.serving((), |worker| worker.recheck());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use vm_memory::mmap::MmapRegion;
    use vm_memory::FileOffset;

    /// A file of `pages` pages mapped shared; the mapping goes with the region.
    fn mapped_file(pages: usize) -> (std::fs::File, MmapRegion, *mut u8) {
        let file = tempfile::tempfile().unwrap();
        file.set_len(pages as u64 * 4096).unwrap();
        let region = MmapRegion::build(
            Some(FileOffset::new(file.try_clone().unwrap(), 0)),
            pages * 4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
        )
        .unwrap();
        let base = region.as_ptr();
        (file, region, base)
    }

    #[test]
    fn a_fault_in_a_scope_is_counted_and_survived() {
        install_handler().unwrap();
        let (file, _region, base) = mapped_file(4);
        // SAFETY: within the mapping.
        unsafe { base.add(4096).write_volatile(7) };
        let scope = FaultScope::enter();
        // SAFETY: within the mapping.
        assert_eq!(unsafe { base.add(4096).read_volatile() }, 7);
        assert!(!scope.faulted());
        file.set_len(0).unwrap();
        // SAFETY: within the mapping; past the file's end now, which the scope absorbs.
        let after = unsafe { base.add(2 * 4096).read_volatile() };
        assert_eq!(after, 0);
        assert!(scope.faulted());
        drop(scope);
        let next = FaultScope::enter();
        // SAFETY: the page the handler put in place.
        unsafe { base.add(2 * 4096).write_volatile(1) };
        assert!(!next.faulted(), "the replaced page does not fault again");
    }

    struct Touching {
        notifier: Arc<EventFd>,
        address: *mut u8,
        kicks: Arc<AtomicUsize>,
    }

    // SAFETY: the test's mapping outlives the worker, which runs on the test's thread.
    unsafe impl Send for Touching {}

    impl QueueWorker for Touching {
        fn queue_index(&self) -> u16 {
            2
        }
        fn notifier(&self) -> &Arc<EventFd> {
            &self.notifier
        }
        fn notifier_ready(&mut self) {
            self.kicks.fetch_add(1, Ordering::SeqCst);
            // SAFETY: within the test's mapping.
            unsafe { self.address.read_volatile() };
        }
        fn completion_fd(&self) -> Option<BorrowedFd<'_>> {
            None
        }
        fn completions_ready(&mut self) {}
        fn in_flight(&self) -> usize {
            0
        }
    }

    #[test]
    fn a_faulting_worker_is_stopped_and_reported_once() {
        install_handler().unwrap();
        let (file, _region, base) = mapped_file(1);
        let reported = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&reported);
        let kicks = Arc::new(AtomicUsize::new(0));
        let inner = Box::new(Touching {
            notifier: Arc::new(EventFd::new(0).unwrap()),
            address: base,
            kicks: Arc::clone(&kicks),
        });
        let logger = Logger::root(slog::Discard, slog::o!());
        let shrinkable = ShrinkableMemory::default();
        shrinkable.mapped();
        let mut worker = GuardedWorker::new(
            inner,
            Arc::new(move || flag.store(true, Ordering::SeqCst)),
            shrinkable,
            &logger,
        );
        worker.notifier_ready();
        assert!(!reported.load(Ordering::SeqCst));
        file.set_len(0).unwrap();
        worker.notifier_ready();
        assert!(reported.load(Ordering::SeqCst));
        assert!(!worker.poll());
        worker.notifier_ready();
        assert_eq!(
            kicks.load(Ordering::SeqCst),
            2,
            "no kick served after the fault"
        );
    }

    /// Records how many fault scopes its calls run in.
    struct ScopeProbe {
        notifier: Arc<EventFd>,
        depth: Arc<AtomicUsize>,
    }

    impl QueueWorker for ScopeProbe {
        fn queue_index(&self) -> u16 {
            2
        }
        fn notifier(&self) -> &Arc<EventFd> {
            &self.notifier
        }
        fn notifier_ready(&mut self) {
            let depth = SCOPE_DEPTH.with(Cell::get) as usize;
            self.depth.store(depth, Ordering::SeqCst);
        }
        fn completion_fd(&self) -> Option<BorrowedFd<'_>> {
            None
        }
        fn completions_ready(&mut self) {}
        fn in_flight(&self) -> usize {
            0
        }
    }

    /// Sealed memory cannot fault: the scope is skipped until memory that can shrink is mapped,
    /// and taken from then on.
    #[test]
    fn the_guard_costs_nothing_until_shrinkable_memory_is_mapped() {
        let depth = Arc::new(AtomicUsize::new(usize::MAX));
        let shrinkable = ShrinkableMemory::default();
        let mut worker = GuardedWorker::new(
            Box::new(ScopeProbe {
                notifier: Arc::new(EventFd::new(0).unwrap()),
                depth: Arc::clone(&depth),
            }),
            Arc::new(|| {}),
            shrinkable.clone(),
            &Logger::root(slog::Discard, slog::o!()),
        );
        worker.notifier_ready();
        assert_eq!(depth.load(Ordering::SeqCst), 0);
        shrinkable.mapped();
        worker.notifier_ready();
        assert_eq!(depth.load(Ordering::SeqCst), 1);
    }
}
