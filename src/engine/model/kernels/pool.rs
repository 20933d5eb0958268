//! The threads wick's kernels split a parallel region over, made to share the CPU.
//!
//! A pool whose caller waits for every worker at the end of every region (candle's, llama.cpp's)
//! stalls a whole decode step when one worker loses its core to another process: the others spin
//! at the barrier while it waits to be scheduled. Here a region is a number of parts taken from a
//! shared counter, by the caller too, and the caller waits only for the parts, never for a worker
//! to show up: a worker that lost its core before taking a part costs nothing, and its parts go to
//! whoever runs. Waiting spins briefly, then yields the core, and idle workers sleep.

use std::any::Any;
use std::cell::Cell;
use std::hint::spin_loop;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering::*};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long a waiting thread spins before it yields its core, and an idle worker before it
/// sleeps: longer than the gap between a decode step's regions, far shorter than a time slice.
const SPIN: Duration = Duration::from_micros(50);
const IDLE: Duration = Duration::from_millis(2);

thread_local! {
    /// Set on the pool's workers, and on a caller while it runs parts: a region started from
    /// inside one runs inline.
    static IN_POOL: Cell<bool> = const { Cell::new(false) };
}

/// The pool, with one worker fewer than the threads wick computes with (the caller is one).
pub(crate) fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| Pool::new(candle_core::utils::get_num_threads().saturating_sub(1)))
}

pub(crate) struct Pool {
    shared: &'static Shared,
    workers: usize,
    /// One region at a time.
    region: Mutex<()>,
}

struct Shared {
    /// The region being run, or null.
    job: AtomicPtr<Job>,
    /// Bumped for each new region.
    epoch: AtomicUsize,
    /// Workers between reading `job` and leaving it: a region's caller waits for them before
    /// its job (on its stack) goes away.
    inside: AtomicUsize,
    /// Workers asleep, and what wakes them.
    sleeping: AtomicUsize,
    sleep: Mutex<()>,
    wake: Condvar,
}

impl Shared {
    /// Workers never end, so what they share lives as long as the process.
    fn leaked() -> &'static Shared {
        Box::leak(Box::new(Shared {
            job: AtomicPtr::new(std::ptr::null_mut()),
            epoch: AtomicUsize::new(0),
            inside: AtomicUsize::new(0),
            sleeping: AtomicUsize::new(0),
            sleep: Mutex::new(()),
            wake: Condvar::new(),
        }))
    }
}

/// One parallel region, on its caller's stack.
struct Job {
    /// Calls the region's closure (behind `data`) on one part.
    call: unsafe fn(*const (), usize),
    data: *const (),
    parts: usize,
    next: AtomicUsize,
    done: AtomicUsize,
    panic: Mutex<Option<Box<dyn Any + Send>>>,
}

impl Job {
    /// Takes parts until none is left.
    fn work(&self) {
        loop {
            let part = self.next.fetch_add(1, Relaxed);
            if part >= self.parts {
                return;
            }
            // SAFETY: `data` is the closure `call` was made for, alive until every part is done
            // (the caller waits for `done` before returning).
            let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| unsafe {
                (self.call)(self.data, part)
            }));
            if let Err(payload) = run {
                let mut panic = self.panic.lock().unwrap_or_else(|e| e.into_inner());
                panic.get_or_insert(payload);
            }
            self.done.fetch_add(1, Release);
        }
    }
}

impl Pool {
    pub fn new(workers: usize) -> Self {
        let shared = Shared::leaked();
        let mut started = 0;
        for i in 0..workers {
            let spawned = std::thread::Builder::new()
                .name(format!("wick-kernel-{i}"))
                .spawn(move || worker(shared));
            // Without a thread the caller does the work itself: slower, never wrong.
            if spawned.is_ok() {
                started += 1;
            }
        }
        Self {
            shared,
            workers: started,
            region: Mutex::new(()),
        }
    }

    /// Runs `f` on every part `0..parts`, spread over the caller and the workers; returns when
    /// all are done. A panic in a part is raised here once the others are done.
    pub fn run<F: Fn(usize) + Sync>(&self, parts: usize, f: F) {
        if self.workers == 0 || parts <= 1 || IN_POOL.with(Cell::get) {
            (0..parts).for_each(f);
            return;
        }
        unsafe fn call<F: Fn(usize)>(data: *const (), part: usize) {
            // SAFETY: `data` is the `F` that `run` made this job from, alive while it runs.
            unsafe { (*data.cast::<F>())(part) }
        }
        let _region = self.region.lock().unwrap_or_else(|e| e.into_inner());
        let job = Job {
            call: call::<F>,
            data: (&f as *const F).cast(),
            parts,
            next: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            panic: Mutex::new(None),
        };
        let shared = self.shared;
        shared.job.store((&job as *const Job).cast_mut(), SeqCst);
        shared.epoch.fetch_add(1, SeqCst);
        if shared.sleeping.load(SeqCst) > 0 {
            let _sleep = shared.sleep.lock().unwrap_or_else(|e| e.into_inner());
            shared.wake.notify_all();
        }
        // A region started from one of this region's parts runs inline, here as on a worker.
        IN_POOL.with(|p| p.set(true));
        job.work();
        IN_POOL.with(|p| p.set(false));
        wait_until(|| job.done.load(Acquire) == parts);
        // No worker may see the job once it is gone: retract it, then wait for those that
        // already took it (they find no part left and leave at once).
        shared.job.store(std::ptr::null_mut(), SeqCst);
        wait_until(|| shared.inside.load(SeqCst) == 0);
        let panic = job.panic.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(payload) = panic {
            std::panic::resume_unwind(payload);
        }
    }
}

fn worker(shared: &'static Shared) {
    IN_POOL.with(|p| p.set(true));
    let mut seen = shared.epoch.load(SeqCst);
    loop {
        let started = Instant::now();
        let mut spins = 0u32;
        while shared.epoch.load(SeqCst) == seen {
            if pause(started, &mut spins) < IDLE {
                continue;
            }
            let mut guard = shared.sleep.lock().unwrap_or_else(|e| e.into_inner());
            shared.sleeping.fetch_add(1, SeqCst);
            while shared.epoch.load(SeqCst) == seen {
                guard = shared.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
            }
            shared.sleeping.fetch_sub(1, SeqCst);
        }
        seen = shared.epoch.load(SeqCst);
        shared.inside.fetch_add(1, SeqCst);
        let job = shared.job.load(SeqCst);
        if !job.is_null() {
            // SAFETY: the region's caller retracts `job` and then waits for `inside` to reach
            // zero before the job leaves its stack; this worker was counted before it read the
            // pointer, so the job outlives this call.
            unsafe { (*job).work() };
        }
        shared.inside.fetch_sub(1, SeqCst);
    }
}

/// Spins briefly, then yields the core until `done()`.
fn wait_until(done: impl Fn() -> bool) {
    let started = Instant::now();
    let mut spins = 0u32;
    while !done() {
        pause(started, &mut spins);
    }
}

/// One round of waiting since `started`: a spin, or once waiting has lasted [`SPIN`], a yield of
/// the core. Returns how long the wait has lasted (checked every 64 rounds, else zero).
fn pause(started: Instant, spins: &mut u32) -> Duration {
    *spins = spins.wrapping_add(1);
    if !spins.is_multiple_of(64) {
        spin_loop();
        return Duration::ZERO;
    }
    let waited = started.elapsed();
    if waited < SPIN {
        spin_loop();
    } else {
        std::thread::yield_now();
    }
    waited
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;

    use super::*;

    #[test]
    fn every_part_runs_once_and_nested_regions_run_inline() {
        let pool = Pool::new(3);
        for parts in [0, 1, 2, 7, 1000] {
            let counts: Vec<AtomicU64> = (0..parts).map(|_| AtomicU64::new(0)).collect();
            pool.run(parts, |i| {
                counts[i].fetch_add(1, Relaxed);
                pool.run(2, |_| {});
            });
            assert!(counts.iter().all(|c| c.load(Relaxed) == 1), "{parts} parts");
        }
    }

    /// The mechanism that shares the CPU: a region never waits for a worker that has not taken
    /// a part. This pool's one worker never runs at all (as one that lost its core), and its
    /// regions still finish, every part run by the caller.
    #[test]
    fn a_region_does_not_wait_for_a_worker_that_never_runs() {
        let pool = Pool {
            shared: Shared::leaked(),
            workers: 1,
            region: Mutex::new(()),
        };
        let me = std::thread::current().id();
        for _ in 0..100 {
            let by_me = AtomicUsize::new(0);
            pool.run(64, |_| {
                if std::thread::current().id() == me {
                    by_me.fetch_add(1, SeqCst);
                }
            });
            assert_eq!(by_me.load(SeqCst), 64);
        }
    }

    #[test]
    fn a_panic_in_a_part_reaches_the_caller_and_the_pool_goes_on() {
        let pool = Pool::new(2);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.run(16, |i| assert!(i != 5, "part 5 fails"));
        }));
        assert!(result.is_err());
        let ran = AtomicUsize::new(0);
        pool.run(16, |_| {
            ran.fetch_add(1, SeqCst);
        });
        assert_eq!(ran.load(SeqCst), 16);
    }
}
