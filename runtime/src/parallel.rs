//! A minimal parallel-for over disjoint chunks: rayon threads with `std`, sequential without.

/// A fixed pool of worker threads (one thread, in place, without `std`).
pub struct Pool {
    #[cfg(feature = "std")]
    pool: Option<rayon::ThreadPool>,
    threads: usize,
}

impl Pool {
    /// A pool of `threads` threads (0 = one per available core).
    #[cfg(feature = "std")]
    pub fn new(threads: usize) -> Result<Self, crate::Error> {
        let threads =
            if threads == 0 { std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) } else { threads };
        let pool = if threads > 1 {
            Some(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .map_err(|e| crate::Error::Threads(alloc::format!("{e}")))?,
            )
        } else {
            None
        };
        Ok(Pool { pool, threads })
    }

    /// The sequential pool.
    pub fn single() -> Self {
        Pool {
            #[cfg(feature = "std")]
            pool: None,
            threads: 1,
        }
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Calls `f(i, chunk)` for each `chunk_len`-sized piece of `data` (the last may be shorter).
    pub fn for_each_chunk<T: Send>(&self, data: &mut [T], chunk_len: usize, f: &(dyn Fn(usize, &mut [T]) + Sync)) {
        #[cfg(feature = "std")]
        if let Some(pool) = &self.pool {
            use rayon::prelude::*;
            pool.install(|| data.par_chunks_mut(chunk_len).enumerate().for_each(|(i, c)| f(i, c)));
            return;
        }
        for (i, c) in data.chunks_mut(chunk_len).enumerate() {
            f(i, c);
        }
    }
}
