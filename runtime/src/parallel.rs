//! A minimal parallel-for over disjoint chunks: a persistent thread team with `std`, sequential
//! without.
//!
//! Decoding runs ~150 small parallel regions per token, so what limits it is the latency of
//! handing a region to the threads, not the work. The team's workers are created once per
//! [`Pool`] and wait on an epoch counter. A region stores a pointer to its job and opens a new
//! epoch; the caller runs the job as thread 0 while workers that see the epoch join in, claiming
//! chunks from a shared counter. When the caller's own call returns every chunk has been claimed,
//! so it closes the region and waits only for the workers still inside it: a worker that is asleep
//! or preempted never holds a region up unless it holds a chunk. Waiting (workers for a region,
//! the caller for the workers) polls for ~100 µs — a few µs of busy-waiting, then yielding — and
//! then sleeps (`thread::park`), so idle threads do not burn a CPU. Each row's arithmetic is the
//! same whichever thread computes it.

/// A fixed team of worker threads (one thread, in place, without `std`).
pub struct Pool {
    #[cfg(feature = "std")]
    team: Option<team::Team>,
    threads: usize,
}

impl Pool {
    /// A pool of `threads` threads (0 = [`default_threads`]: one per performance core). The
    /// caller of a parallel region is one of them, so `threads - 1` workers are started.
    #[cfg(feature = "std")]
    pub fn new(threads: usize) -> Result<Self, crate::Error> {
        let threads = if threads == 0 { default_threads() } else { threads };
        let team = if threads > 1 {
            Some(team::Team::new(threads).map_err(|e| crate::Error::Threads(alloc::format!("{e}")))?)
        } else {
            None
        };
        Ok(Pool { team, threads })
    }

    /// The sequential pool.
    pub fn single() -> Self {
        Pool {
            #[cfg(feature = "std")]
            team: None,
            threads: 1,
        }
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Calls `f(i, chunk)` for each `chunk_len`-sized piece of `data` (the last may be shorter).
    ///
    /// Chunks are shared out over the pool's threads; the call returns once all are done. A panic
    /// in `f` is re-raised here after every thread has left the region. Called from inside a
    /// region of the same pool (or from two threads at once), the inner call runs sequentially.
    pub fn for_each_chunk<T: Send>(&self, data: &mut [T], chunk_len: usize, f: &(dyn Fn(usize, &mut [T]) + Sync)) {
        assert!(chunk_len > 0, "for_each_chunk: chunk_len must be positive");
        #[cfg(feature = "std")]
        if let Some(team) = &self.team {
            let n_chunks = data.len().div_ceil(chunk_len);
            if n_chunks > 1 {
                let (len, base) = (data.len(), team::SendPtr::new(data));
                let next = core::sync::atomic::AtomicUsize::new(0);
                let job = |_thread: usize| loop {
                    let c = next.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
                    if c >= n_chunks {
                        break;
                    }
                    let lo = c * chunk_len;
                    // SAFETY: `base` points at `data` (`len` elements), which is mutably borrowed
                    // for the whole call, and `run` returns only after every call of this job has
                    // returned, so the pointer is valid throughout. Each chunk index is handed out
                    // once by the `fetch_add`, so the ranges `lo..lo + chunk_len` never overlap and
                    // no two `&mut` slices alias; `T: Send` allows moving access across threads.
                    let chunk = unsafe { base.slice(lo, chunk_len.min(len - lo)) };
                    f(c, chunk);
                };
                // `run` returns once `job(0)` has returned — by then every chunk is claimed — and
                // every worker that joined has finished its chunk.
                if !team.run(&job) {
                    // The team is busy (a nested or concurrent call): do it all here.
                    job(0);
                }
                return;
            }
        }
        for (i, c) in data.chunks_mut(chunk_len).enumerate() {
            f(i, c);
        }
    }
}

#[cfg(feature = "std")]
mod team {
    use alloc::boxed::Box;
    use alloc::sync::Arc;
    use alloc::vec::Vec;
    use core::any::Any;
    use core::sync::atomic::{fence, AtomicBool, AtomicPtr, AtomicUsize, Ordering::*};
    // Each Dekker handshake below (a SeqCst store or RMW, then a SeqCst load of the other
    // side's flag) also has an explicit full fence between the two: redundant in Rust's model
    // and on hardware (aarch64's STLR → LDAR is ordered), but qemu-user's translation of
    // aarch64 onto an x86 host is suspected of letting the load pass the store (CI 12-06: both
    // threads of `greedy_gaps` parked for 17 minutes under qemu-aarch64), and a DMB per region
    // costs nothing measurable. (qemu emits STLR as barrier-then-store and LDAR as
    // load-then-barrier, neither of which orders the store before the later load on an x86
    // host; a DMB becomes an `mfence`.)
    use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
    use std::sync::Mutex;
    use std::thread::{self, JoinHandle, Thread};
    use std::time::{Duration, Instant};

    /// How long a waiting thread polls before it sleeps.
    const SPIN: Duration = Duration::from_micros(100);

    /// Busy-wait iterations (`spin_loop`, a few µs in all) before polling starts to yield.
    const PAUSES: u32 = 64;

    /// The low bit of [`Shared::state`]: the region of that epoch is open for workers to join.
    const OPEN: usize = 1;

    /// A region's job: called by the caller with thread index 0 and by each worker that joins
    /// with its own index; it must itself see to it that all the work gets done.
    type Job<'a> = &'a (dyn Fn(usize) + Sync + 'a);

    /// A raw pointer to a mutable slice, shareable between the threads of one region.
    pub(super) struct SendPtr<T>(*mut T);

    // SAFETY: `SendPtr` is only built by `for_each_chunk` from a `&mut [T]` with `T: Send`, and
    // only dereferenced through `slice`, whose caller guarantees that the ranges handed out are
    // disjoint and outlived by the borrow — the same contract as `split_at_mut` across threads.
    unsafe impl<T: Send> Sync for SendPtr<T> {}

    impl<T> SendPtr<T> {
        pub(super) fn new(data: &mut [T]) -> Self {
            SendPtr(data.as_mut_ptr())
        }

        /// `len` elements from `at`.
        ///
        /// # Safety
        /// `at + len` is within the slice `new` was given, that slice's borrow is still live, and
        /// no other reference to these elements exists while the result is.
        pub(super) unsafe fn slice<'a>(&self, at: usize, len: usize) -> &'a mut [T] {
            // SAFETY: in bounds, live and unaliased by this function's contract.
            unsafe { core::slice::from_raw_parts_mut(self.0.add(at), len) }
        }
    }

    /// What the caller and the workers share.
    struct Shared {
        /// `epoch << 1 | OPEN`: bumped (and opened) once per region, closed when the caller's own
        /// call of the job returns. Workers wait for the epoch to move.
        state: AtomicUsize,
        /// The current region's job: a pointer to a [`Job`] on the caller's stack.
        job: AtomicPtr<()>,
        /// Workers inside a region (or checking whether they may enter one).
        active: AtomicUsize,
        /// Workers asleep (or about to be) waiting for the next region.
        sleepers: AtomicUsize,
        /// Set when the workers should exit.
        stop: AtomicBool,
        /// The caller is asleep (or about to be) waiting for `active`; `caller` is whom to wake.
        caller_asleep: AtomicBool,
        caller: Mutex<Option<Thread>>,
        /// The first panic a worker caught in the current region.
        panic: Mutex<Option<Box<dyn Any + Send>>>,
    }

    /// Persistent workers `1..threads`; the thread calling [`Team::run`] is thread 0.
    pub(super) struct Team {
        shared: Arc<Shared>,
        workers: Vec<JoinHandle<()>>,
        /// A region is in progress (guards against nested and concurrent `run`s).
        busy: AtomicBool,
    }

    impl Team {
        pub(super) fn new(threads: usize) -> std::io::Result<Team> {
            let shared = Arc::new(Shared {
                state: AtomicUsize::new(0),
                job: AtomicPtr::new(core::ptr::null_mut()),
                active: AtomicUsize::new(0),
                sleepers: AtomicUsize::new(0),
                stop: AtomicBool::new(false),
                caller_asleep: AtomicBool::new(false),
                caller: Mutex::new(None),
                panic: Mutex::new(None),
            });
            // On a spawn error, dropping `team` stops and joins the workers started so far.
            let mut team = Team { shared, workers: Vec::with_capacity(threads - 1), busy: AtomicBool::new(false) };
            for index in 1..threads {
                let shared = Arc::clone(&team.shared);
                let handle = thread::Builder::new()
                    .name(alloc::format!("pith-{index}"))
                    .spawn(move || worker(&shared, index))?;
                team.workers.push(handle);
            }
            Ok(team)
        }

        /// Calls `job(0)` here while the workers that notice in time join with `job(t)`; returns
        /// once all those calls have returned, re-raising the first panic among them. `job` must
        /// leave no work undone when `job(0)` returns (e.g. claim pieces from a shared counter
        /// until none are left). Returns `false` without calling anything if a region is already
        /// in progress on this team (a nested or concurrent call).
        pub(super) fn run(&self, job: Job<'_>) -> bool {
            if self.busy.compare_exchange(false, true, Acquire, Relaxed).is_err() {
                return false;
            }
            let s = &*self.shared;
            // Only the holder of `busy` writes `state`.
            let epoch = (s.state.load(Relaxed) >> 1).wrapping_add(1);
            // Publish the job before the epoch: a worker reads it only after seeing the epoch.
            s.job.store(&job as *const Job<'_> as *mut (), Relaxed);
            s.state.store(epoch << 1 | OPEN, SeqCst);
            // A sleeping worker either re-checks the state after counting itself in `sleepers` and
            // sees the new epoch, or is counted here and unparked (SeqCst on both sides; an unpark
            // before the worker's park makes that park return at once).
            fence(SeqCst);
            if s.sleepers.load(SeqCst) > 0 {
                for w in &self.workers {
                    w.thread().unpark();
                }
            }
            let mine = catch_unwind(AssertUnwindSafe(|| job(0)));
            // Close the region, then wait for the workers inside it — even if our call panicked,
            // since they may still be using `job`.
            s.state.store(epoch << 1, SeqCst);
            fence(SeqCst);
            self.wait_idle();
            s.job.store(core::ptr::null_mut(), Relaxed);
            let theirs = s.panic.lock().unwrap_or_else(|e| e.into_inner()).take();
            self.busy.store(false, Release);
            if let Err(payload) = mine {
                resume_unwind(payload);
            }
            if let Some(payload) = theirs {
                resume_unwind(payload);
            }
            true
        }

        /// Waits until no worker is inside the (closed) region: spin, then sleep.
        fn wait_idle(&self) {
            let s = &*self.shared;
            // A worker counts itself in `active` before it checks that the region is open, so
            // once the region is closed and `active` reads 0, no worker is using the job or can
            // start to (SeqCst: `active` increment, state load / state store, `active` load).
            if spin_until(|| s.active.load(SeqCst) == 0) {
                return;
            }
            *s.caller.lock().unwrap_or_else(|e| e.into_inner()) = Some(thread::current());
            // Dekker-style with the worker's `active` decrement then `caller_asleep` load: one of
            // the two sees the other, and an unpark before our park makes the park return at once.
            s.caller_asleep.store(true, SeqCst);
            fence(SeqCst);
            while s.active.load(SeqCst) != 0 {
                thread::park();
            }
            s.caller_asleep.store(false, SeqCst);
        }
    }

    impl Drop for Team {
        fn drop(&mut self) {
            self.shared.stop.store(true, SeqCst);
            for w in &self.workers {
                w.thread().unpark();
            }
            for w in self.workers.drain(..) {
                // Jobs' panics are caught in the worker, so a worker cannot have panicked.
                let _ = w.join();
            }
        }
    }

    /// Waits until `ready()` (returns `true`) or for about [`SPIN`] (returns `false`, and the
    /// caller goes to sleep). First a short busy-wait — the next region usually comes within a
    /// few µs — then `yield_now` between checks: on an idle CPU that returns at once, but on a
    /// busy machine it hands the CPU to whoever is runnable instead of burning it. A thread that
    /// only spins also uses up its fair share and is then preempted, typically while it holds a
    /// chunk that the others must wait for (tg128 on 2 threads fell to a third when the
    /// machine's other cores were busy).
    #[inline]
    fn spin_until(ready: impl Fn() -> bool) -> bool {
        for _ in 0..PAUSES {
            if ready() {
                return true;
            }
            core::hint::spin_loop();
        }
        let start = Instant::now();
        loop {
            if ready() {
                return true;
            }
            if start.elapsed() > SPIN {
                return false;
            }
            thread::yield_now();
        }
    }

    /// A worker's loop: wait for a new epoch (or `stop`), join the region if it is still open.
    fn worker(s: &Shared, index: usize) {
        let mut seen = 0usize;
        loop {
            let moved = || s.stop.load(SeqCst) || s.state.load(SeqCst) >> 1 != seen;
            if !spin_until(moved) {
                s.sleepers.fetch_add(1, SeqCst);
                fence(SeqCst);
                while !moved() {
                    thread::park();
                }
                s.sleepers.fetch_sub(1, SeqCst);
            }
            if s.stop.load(SeqCst) {
                return;
            }
            s.active.fetch_add(1, SeqCst);
            fence(SeqCst);
            let state = s.state.load(SeqCst);
            seen = state >> 1;
            if state & OPEN != 0 {
                // SAFETY: we are counted in `active` and then saw the region open, so the caller
                // has not yet closed it and, once it does, will wait for `active` to drop before
                // leaving `Team::run` (see `wait_idle`) — which is what holds the borrow of the
                // job and of everything it captures, even if the caller's own call panics. The
                // pointer was stored before the state we read (release / acquire via `state`),
                // and no later region can store another until we leave `active`.
                let job: Job<'_> = unsafe { *(s.job.load(Acquire) as *const Job<'_>) };
                if let Err(payload) = catch_unwind(AssertUnwindSafe(|| job(index))) {
                    // The panic hook has already printed the message on this thread; the caller
                    // re-raises the payload.
                    let mut slot = s.panic.lock().unwrap_or_else(|e| e.into_inner());
                    slot.get_or_insert(payload);
                }
            }
            // From here on `job` (and whatever it borrows) may be gone.
            s.active.fetch_sub(1, SeqCst);
            fence(SeqCst);
            if s.caller_asleep.load(SeqCst) {
                if let Some(t) = &*s.caller.lock().unwrap_or_else(|e| e.into_inner()) {
                    t.unpark();
                }
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn team_drop_stops_and_joins_workers() {
            for nap in [0, 5] {
                let team = Team::new(4).unwrap();
                let shared = Arc::clone(&team.shared);
                assert!(team.run(&|_| {}));
                // Workers asleep or still spinning: either way drop must end them.
                std::thread::sleep(Duration::from_millis(nap));
                drop(team);
                // Each worker owned a clone; join returned only after they were all released.
                assert_eq!(Arc::strong_count(&shared), 1);
            }
        }
    }
}

/// The default number of threads: one per **performance core** this process may run on.
///
/// On big.LITTLE / DynamIQ phones and boards (and hybrid x86), a spinning team that spills onto
/// the little cores runs at their pace: every step waits for its slowest thread (llama.cpp
/// users lose up to 100×, llama.cpp #21763). The rule, from Linux's sysfs:
/// * `cpuN/cpu_capacity` (Arm and hybrid x86: the scheduler's per-core capacity, 1024 for the
///   fastest, which accounts for both clock and IPC): a core is a performance core if its
///   capacity is at least half the largest. Little cores are 25–45 % of the big ones on
///   current Arm SoCs; prime and big cores are 70–100 %, so both count.
/// * otherwise `cpuN/cpufreq/cpuinfo_max_freq`: at least 80 % of the highest maximum clock
///   (frequency alone undersells a big core's IPC, hence the stricter cut).
/// * cores outside this process's affinity (`Cpus_allowed_list`) do not count; the result
///   never exceeds [`std::thread::available_parallelism`] (which also honours cgroup quotas).
///
/// Where sysfs says nothing (not Linux, no such files, all cores alike) it is
/// `available_parallelism`. `-t N` overrides it.
#[cfg(feature = "std")]
pub fn default_threads() -> usize {
    let n = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let allowed = std::fs::read_to_string("/proc/self/status").ok().and_then(|s| {
        s.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")).and_then(|l| parse_cpu_list(l.trim()))
    });
    performance_cores(std::path::Path::new("/sys/devices/system/cpu"), allowed.as_deref()).map_or(n, |p| p.clamp(1, n))
}

/// The number of performance cores under `sysfs` (see [`default_threads`]) among `allowed`
/// (all if `None`); `None` when the files do not tell (missing, or every core alike).
#[cfg(feature = "std")]
pub fn performance_cores(sysfs: &std::path::Path, allowed: Option<&[usize]>) -> Option<usize> {
    let mut cpus: Vec<(usize, std::path::PathBuf)> = std::fs::read_dir(sysfs)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let id: usize = name.strip_prefix("cpu")?.parse().ok()?;
            Some((id, e.path()))
        })
        .collect();
    cpus.retain(|(id, _)| allowed.is_none_or(|a| a.contains(id)));
    let read = |p: std::path::PathBuf| -> Option<u64> { std::fs::read_to_string(p).ok()?.trim().parse().ok() };
    for (file, percent) in [("cpu_capacity", 50u64), ("cpufreq/cpuinfo_max_freq", 80)] {
        let vals: Option<Vec<u64>> = cpus.iter().map(|(_, p)| read(p.join(file))).collect();
        let Some(vals) = vals.filter(|v| !v.is_empty()) else { continue };
        let max = *vals.iter().max()?;
        if max == 0 || vals.iter().all(|&v| v == max) {
            return None;
        }
        return Some(vals.iter().filter(|&&v| v * 100 >= max * percent).count());
    }
    None
}

/// A Linux CPU list (`0-3,6,8-9`) as CPU numbers.
#[cfg(feature = "std")]
fn parse_cpu_list(s: &str) -> Option<Vec<usize>> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => out.extend(a.parse::<usize>().ok()?..=b.parse::<usize>().ok()?),
            None => out.push(part.parse().ok()?),
        }
    }
    Some(out)
}

#[cfg(all(test, feature = "std"))]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Where this process's fake sysfs trees go (removed by the test).
    fn sysfs_root() -> std::path::PathBuf {
        std::env::temp_dir().join(format!("pith-sysfs-{}", std::process::id()))
    }

    /// A fake `/sys/devices/system/cpu` with one `file` per core holding `vals[i]`.
    fn sysfs(file: &str, vals: &[u64]) -> std::path::PathBuf {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = sysfs_root().join(N.fetch_add(1, Ordering::Relaxed).to_string());
        for (i, v) in vals.iter().enumerate() {
            let f = dir.join(format!("cpu{i}")).join(file);
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(f, format!("{v}\n")).unwrap();
        }
        // Entries that are not cores are ignored.
        std::fs::create_dir_all(dir.join("cpufreq")).unwrap();
        std::fs::write(dir.join("online"), "0-7\n").unwrap();
        dir
    }

    #[test]
    fn default_threads_count_performance_cores() {
        // 4 big + 4 little (capacity): the 4 big.
        let d = sysfs("cpu_capacity", &[446, 446, 446, 446, 1024, 1024, 1024, 1024]);
        assert_eq!(performance_cores(&d, None), Some(4));
        // Prime + 3 big + 4 little: prime and big count.
        let d = sysfs("cpu_capacity", &[1024, 871, 871, 871, 325, 325, 325, 325]);
        assert_eq!(performance_cores(&d, None), Some(4));
        // Affinity: only cores 4..8 (little) and 0 (prime) allowed.
        assert_eq!(performance_cores(&d, Some(&[0, 4, 5, 6, 7])), Some(1));
        // Only clocks: 2 at 2.85 GHz, 6 at 1.8 GHz (63 %: little).
        let d = sysfs(
            "cpufreq/cpuinfo_max_freq",
            &[1_800_000, 1_800_000, 1_800_000, 1_800_000, 1_800_000, 1_800_000, 2_850_000, 2_850_000],
        );
        assert_eq!(performance_cores(&d, None), Some(2));
        // All alike, or nothing to read: no opinion (all available cores).
        assert_eq!(performance_cores(&sysfs("cpu_capacity", &[1024; 4]), None), None);
        assert_eq!(performance_cores(std::path::Path::new("/nonexistent/pith"), None), None);
        assert_eq!(parse_cpu_list("0-3,6, 8-9"), Some(vec![0, 1, 2, 3, 6, 8, 9]));
        assert_eq!(parse_cpu_list("x"), None);
        let n = std::thread::available_parallelism().unwrap().get();
        assert!((1..=n).contains(&default_threads()));
        std::fs::remove_dir_all(sysfs_root()).unwrap();
    }
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    /// Counts the caller in, then waits (up to 10 s) until `n` have arrived: chunks that meet
    /// here must be running on `n` different threads at once.
    fn rendezvous(arrived: &AtomicUsize, n: usize) {
        arrived.fetch_add(1, Ordering::SeqCst);
        let t = Instant::now();
        while arrived.load(Ordering::SeqCst) < n {
            assert!(t.elapsed() < Duration::from_secs(10), "rendezvous of {n} timed out");
            std::hint::spin_loop();
        }
    }

    fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
        p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned()).unwrap()
    }

    #[test]
    fn for_each_chunk_covers_every_element_once() {
        for threads in [1, 2, 3, 4] {
            let pool = Pool::new(threads).unwrap();
            for (len, chunk) in [(0, 1), (1, 1), (7, 3), (100, 7), (1000, 1), (64, 64), (65, 64)] {
                let mut data = vec![0usize; len];
                pool.for_each_chunk(&mut data, chunk, &|i, c: &mut [usize]| {
                    assert!(c.len() == chunk || (i + 1) * chunk >= len, "only the last chunk is short");
                    for (j, v) in c.iter_mut().enumerate() {
                        *v += i * chunk + j + 1;
                    }
                });
                let want: Vec<usize> = (1..=len).collect();
                assert_eq!(data, want, "threads {threads}, len {len}, chunk {chunk}");
            }
        }
    }

    #[test]
    fn workers_join_a_region_on_their_own_threads() {
        let pool = Pool::new(3).unwrap();
        for round in 0..200 {
            // Each of the 3 chunks waits for the other two: they must run on 3 threads at once.
            let arrived = AtomicUsize::new(0);
            let ids = Mutex::new(Vec::new());
            let mut data = [0u8; 3];
            pool.for_each_chunk(&mut data, 1, &|i, c: &mut [u8]| {
                rendezvous(&arrived, 3);
                ids.lock().unwrap().push(std::thread::current().id());
                c[0] = i as u8 + 1;
            });
            assert_eq!(data, [1, 2, 3]);
            let mut ids = ids.into_inner().unwrap();
            assert!(ids.contains(&std::thread::current().id()), "the caller takes part");
            ids.sort_by_key(|id| format!("{id:?}"));
            ids.dedup();
            assert_eq!(ids.len(), 3, "three distinct threads");
            if round % 50 == 0 {
                // Also start from a sleeping team.
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }

    #[test]
    fn many_small_regions_and_sleeping_workers() {
        let pool = Pool::new(2).unwrap();
        let total = AtomicUsize::new(0);
        for round in 0..20_000 {
            let mut data = [0u32; 4];
            pool.for_each_chunk(&mut data, 2, &|_, c: &mut [u32]| {
                c.fill(1);
                total.fetch_add(1, Ordering::Relaxed);
            });
            assert_eq!(data, [1; 4]);
            // Now and then let the workers fall asleep, so regions also start from a parked team.
            if round % 2000 == 0 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        assert_eq!(total.load(Ordering::Relaxed), 40_000);
    }

    #[test]
    fn nested_and_concurrent_calls_run() {
        let pool = Pool::new(2).unwrap();
        let mut outer = vec![0u32; 8];
        pool.for_each_chunk(&mut outer, 4, &|i, c: &mut [u32]| {
            let mut inner = vec![0u32; 8];
            pool.for_each_chunk(&mut inner, 2, &|j, d: &mut [u32]| d.fill(j as u32 + 1));
            c.fill(i as u32 + inner.iter().sum::<u32>());
        });
        assert_eq!(outer, [20, 20, 20, 20, 21, 21, 21, 21]);
        std::thread::scope(|sc| {
            for _ in 0..2 {
                sc.spawn(|| {
                    for _ in 0..2000 {
                        let mut data = vec![0u8; 16];
                        pool.for_each_chunk(&mut data, 4, &|_, c: &mut [u8]| c.fill(7));
                        assert_eq!(data, [7; 16]);
                    }
                });
            }
        });
    }

    #[test]
    fn panics_reach_the_caller_and_the_pool_still_works() {
        let pool = Pool::new(2).unwrap();
        let caller = std::thread::current().id();
        // The chunk on a worker thread panics, then the one on the calling thread.
        for on_worker in [true, false] {
            let arrived = AtomicUsize::new(0);
            let mut data = [0u8; 2];
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                pool.for_each_chunk(&mut data, 1, &|_, _| {
                    rendezvous(&arrived, 2);
                    let here = if std::thread::current().id() == caller { "caller" } else { "worker" };
                    assert!((here == "worker") != on_worker, "boom on the {here}");
                });
            }));
            let want = if on_worker { "boom on the worker" } else { "boom on the caller" };
            assert_eq!(panic_message(&*r.unwrap_err()), want);
            // The team is idle and usable again.
            let mut data = vec![0u32; 10];
            pool.for_each_chunk(&mut data, 5, &|i, c: &mut [u32]| c.fill(i as u32));
            assert_eq!(data, [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]);
        }
        // A panic in one chunk of many, whichever thread takes it.
        let mut data = vec![0u32; 64];
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.for_each_chunk(&mut data, 8, &|i, _| assert!(i != 5, "chunk {i} failed"));
        }));
        assert_eq!(panic_message(&*r.unwrap_err()), "chunk 5 failed");
    }

    #[test]
    fn pools_start_and_stop_repeatedly() {
        for _ in 0..50 {
            let pool = Pool::new(4).unwrap();
            let mut data = vec![0u8; 4];
            pool.for_each_chunk(&mut data, 1, &|_, c: &mut [u8]| c[0] = 1);
            assert_eq!(data, [1; 4]);
            drop(pool);
        }
        // Also after the workers have gone to sleep.
        let pool = Pool::new(2).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        drop(pool);
    }

    #[test]
    fn pool_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Pool>();
    }

    #[test]
    fn single_pool_is_sequential() {
        let pool = Pool::single();
        assert_eq!(pool.threads(), 1);
        let order = Mutex::new(Vec::new());
        let mut data = vec![0u8; 5];
        pool.for_each_chunk(&mut data, 2, &|i, _| order.lock().unwrap().push(i));
        assert_eq!(*order.lock().unwrap(), [0, 1, 2]);
    }
}
