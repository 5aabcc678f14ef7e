//! With the `count-allocations` feature, the process's global allocator counts every heap
//! allocation, so that the benchmarks can check that the request path makes none (the count is
//! logged when a client disconnects). Without the feature, nothing is counted and nothing is
//! installed.

#[cfg(feature = "count-allocations")]
mod counting {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::sync::atomic::{AtomicU64, Ordering};

    pub static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

    pub struct CountingAllocator;

    // SAFETY: every call is forwarded unchanged to the system allocator, which upholds the
    // GlobalAlloc contract; counting touches no allocated memory.
    unsafe impl GlobalAlloc for CountingAllocator {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
            // SAFETY: the caller's layout obligations are passed on as they are.
            unsafe { System.alloc(layout) }
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
            // SAFETY: as for `alloc`.
            unsafe { System.alloc_zeroed(layout) }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
            // SAFETY: `ptr` came from this allocator (hence from System) with `layout`.
            unsafe { System.realloc(ptr, layout, new_size) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: `ptr` came from this allocator (hence from System) with `layout`.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    #[global_allocator]
    static GLOBAL: CountingAllocator = CountingAllocator;
}

/// Heap allocations (and reallocations) since the process started; None when the feature that
/// counts them is off.
pub fn allocations() -> Option<u64> {
    #[cfg(feature = "count-allocations")]
    {
        Some(counting::ALLOCATIONS.load(std::sync::atomic::Ordering::Relaxed))
    }
    #[cfg(not(feature = "count-allocations"))]
    {
        None
    }
}

#[cfg(all(test, feature = "count-allocations"))]
mod tests {
    #[test]
    fn allocations_are_counted() {
        let before = super::allocations().unwrap();
        let boxed = std::hint::black_box(Box::new([0u8; 64]));
        drop(boxed);
        assert!(super::allocations().unwrap() > before);
    }
}
