//! The process's allocator.

use std::time::Duration;

/// mimalloc rather than glibc's malloc: under load (thousands of watch events and JSON
/// objects a second on every thread) glibc's arenas spent ~40% of the CPU in malloc and free.
/// Built without its transparent huge pages (`no_thp`): with them an idle server held 97 MiB
/// resident, 64 MiB of it in huge pages mostly unused; without, 61 MiB (the `memory`
/// benchmark). The `system-allocator` feature leaves glibc's malloc in place, for heap
/// profilers (heaptrack) that do not see mimalloc's allocations.
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How often idle memory is handed back.
const PURGE_EVERY: Duration = Duration::from_secs(1);

/// Starts a task that hands memory freed at least mimalloc's purge delay (1 s) ago back to
/// the system, on a one-second timer.
///
/// mimalloc purges freed memory only when some thread allocates after the delay, so a server
/// that went idle after a burst kept it: the 37 MiB of a 10,000-pod list's response stayed
/// resident for good (the `memory` benchmark). The delay stays, so a busy server does not
/// return and fault back memory it is about to reuse.
pub(crate) fn return_freed_memory() {
    if cfg!(feature = "system-allocator") {
        return;
    }
    tokio::spawn(async {
        let mut every = tokio::time::interval(PURGE_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            purge_expired();
        }
    });
}

#[allow(unsafe_code)]
fn purge_expired() {
    // SAFETY: `mi_collect` takes no pointers and only walks mimalloc's own state; it may be
    // called from any thread at any time (it purges the arenas every thread shares, and the
    // calling worker thread's own heap).
    unsafe { libmimalloc_sys::mi_collect(false) };
}
