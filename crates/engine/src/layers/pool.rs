//! A fixed pool of worker threads, one per core with the caller as one of them, for the
//! forward pass's fork-joins (matmul tiles, attention heads). A decode step makes ~200 of
//! them for a 0.5B model, each a few microseconds of work per core: a work-stealing pool's
//! per-call cost (waking threads, splitting and stealing tasks) was a large share of that.
//! Here a call publishes one job; every thread takes contiguous chunks (about a quarter of
//! an even share each) from one atomic counter until none are left, so a thread slowed by
//! another process on a small machine does not hold up the rest. Workers spin briefly
//! between calls before they sleep. Who runs a chunk never changes what a task computes, so
//! results do not depend on the number of threads or on timing.

use std::cell::UnsafeCell;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

/// Spin iterations before a worker sleeps (~tens of microseconds: the gap between two
/// matmuls of one step is shorter, the gap between steps of an idle server much longer).
const SPIN: u32 = 20_000;

/// Stack of the pool's threads (and the engine thread): sampling under a grammar runs on them,
/// and llguidance's mask computation recurses with the grammar's depth. Only touched pages
/// cost memory.
pub const THREAD_STACK_BYTES: usize = 64 << 20;

thread_local! {
    /// Set on pool threads and on a caller while it runs its share: a nested `run` from
    /// inside a job runs inline instead of waiting on itself.
    static IN_POOL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

#[derive(Clone, Copy)]
struct Job {
    f: *const (dyn Fn(Range<usize>) + Sync),
    n: usize,
}

struct Shared {
    num_threads: usize,
    job: UnsafeCell<Job>,
    generation: AtomicU64,
    /// The first task not yet taken by any thread.
    next: AtomicUsize,
    pending: AtomicUsize,
    sleeping: AtomicUsize,
    panicked: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
}

// SAFETY: `job` is written only by the caller holding `Pool::calls`, before it bumps
// `generation`, and read by workers only after they observe that bump (Acquire); the closure
// it points to outlives the call because `run` waits for every worker.
unsafe impl Sync for Shared {}
unsafe impl Send for Shared {}

pub struct Pool {
    shared: Arc<Shared>,
    /// One call at a time (two engines in one process share the pool).
    calls: Mutex<()>,
}

/// Runs chunks of `0..n` taken from `next` until it passes `n`.
fn take_chunks(next: &AtomicUsize, n: usize, threads: usize, f: &(dyn Fn(Range<usize>) + Sync)) {
    let chunk = n.div_ceil(threads * 4).max(1);
    loop {
        let start = next.fetch_add(chunk, Ordering::Relaxed);
        if start >= n {
            return;
        }
        f(start..(start + chunk).min(n));
    }
}

impl Pool {
    pub fn new(num_threads: usize) -> Self {
        let num_threads = num_threads.max(1);
        let noop: &(dyn Fn(Range<usize>) + Sync) = &|_| {};
        let shared = Arc::new(Shared {
            num_threads,
            job: UnsafeCell::new(Job { f: noop as *const _, n: 0 }),
            generation: AtomicU64::new(0),
            next: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            sleeping: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        for w in 1..num_threads {
            let s = shared.clone();
            std::thread::Builder::new()
                .name(format!("slm-worker-{w}"))
                .stack_size(THREAD_STACK_BYTES)
                .spawn(move || worker(s))
                .expect("cannot start a worker thread");
        }
        Self { shared, calls: Mutex::new(()) }
    }

    /// The process-wide pool: one thread per core (`SLM_THREADS` overrides).
    pub fn global() -> &'static Pool {
        static POOL: OnceLock<Pool> = OnceLock::new();
        POOL.get_or_init(|| {
            let n = std::env::var("SLM_THREADS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
            Pool::new(n)
        })
    }

    pub fn num_threads(&self) -> usize {
        self.shared.num_threads
    }

    /// Calls `f` on contiguous shares of `0..n`, one per thread, and returns when all are done.
    pub fn run(&self, n: usize, f: &(dyn Fn(Range<usize>) + Sync)) {
        let s = &*self.shared;
        if n <= 1 || s.num_threads == 1 || IN_POOL.with(|c| c.get()) {
            f(0..n);
            return;
        }
        let _one_call = self.calls.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: see `Shared`; the lifetime is erased because we wait below.
        let f_static: *const (dyn Fn(Range<usize>) + Sync) =
            unsafe { std::mem::transmute(f as *const (dyn Fn(Range<usize>) + Sync + '_)) };
        unsafe { *s.job.get() = Job { f: f_static, n } };
        s.next.store(0, Ordering::Relaxed);
        s.pending.store(s.num_threads - 1, Ordering::SeqCst);
        s.generation.fetch_add(1, Ordering::SeqCst);
        if s.sleeping.load(Ordering::SeqCst) > 0 {
            let _g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        // The workers borrow `f`: even if our share panics, wait for them before unwinding.
        IN_POOL.with(|c| c.set(true));
        let mine = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| take_chunks(&s.next, n, s.num_threads, f)));
        IN_POOL.with(|c| c.set(false));
        while s.pending.load(Ordering::Acquire) != 0 {
            std::hint::spin_loop();
        }
        if let Err(p) = mine {
            s.panicked.store(false, Ordering::SeqCst);
            std::panic::resume_unwind(p);
        }
        if s.panicked.swap(false, Ordering::SeqCst) {
            panic!("a worker thread panicked");
        }
    }
}

fn worker(s: Arc<Shared>) {
    IN_POOL.with(|c| c.set(true));
    let mut seen = 0u64;
    loop {
        let mut spins = 0;
        loop {
            let g = s.generation.load(Ordering::Acquire);
            if g != seen {
                seen = g;
                break;
            }
            if spins < SPIN {
                spins += 1;
                std::hint::spin_loop();
                continue;
            }
            let mut guard = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.sleeping.fetch_add(1, Ordering::SeqCst);
            while s.generation.load(Ordering::SeqCst) == seen {
                guard = s.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
            }
            s.sleeping.fetch_sub(1, Ordering::SeqCst);
        }
        // SAFETY: published before the generation bump we observed.
        let job = unsafe { *s.job.get() };
        let f = unsafe { &*job.f };
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| take_chunks(&s.next, job.n, s.num_threads, f)))
            .is_err()
        {
            s.panicked.store(true, Ordering::SeqCst);
        }
        s.pending.fetch_sub(1, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_index_is_covered_once_across_calls() {
        let pool = Pool::new(3);
        for n in [0, 1, 2, 5, 64, 1000] {
            let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            pool.run(n, &|r| {
                r.for_each(|i| {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                })
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1), "n = {n}");
        }
    }

    #[test]
    fn a_nested_run_runs_inline() {
        let pool = Pool::new(2);
        let sum = AtomicUsize::new(0);
        pool.run(4, &|r| {
            for _ in r {
                pool.run(3, &|inner| {
                    sum.fetch_add(inner.len(), Ordering::Relaxed);
                });
            }
        });
        assert_eq!(sum.load(Ordering::Relaxed), 12);
    }

    #[test]
    fn a_panicking_share_is_reported_and_the_pool_keeps_working() {
        let pool = Pool::new(2);
        for bad in [9, 0] {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                pool.run(10, &|r| assert!(!r.contains(&bad)))
            }));
            assert!(r.is_err(), "a panic at {bad} must reach the caller");
        }
        let sum = AtomicUsize::new(0);
        pool.run(10, &|r| {
            sum.fetch_add(r.len(), Ordering::Relaxed);
        });
        assert_eq!(sum.load(Ordering::Relaxed), 10);
    }
}
