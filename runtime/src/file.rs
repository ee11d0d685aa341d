//! The memory-mapped model file (std only). Tensor data is borrowed from the map, never copied.

use crate::{Error, Result};
use std::fs::File;
use std::path::{Path, PathBuf};

/// A read-only memory map of a model file.
pub struct MappedFile {
    path: PathBuf,
    map: memmap2::Mmap,
}

impl MappedFile {
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let io = |source| Error::File { path: path.display().to_string(), source };
        let file = File::open(&path).map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        if meta.is_dir() {
            return Err(io(std::io::Error::other("is a directory, not a GGUF file")));
        }
        if meta.len() == 0 {
            // mmap of an empty file fails on some systems; a map of nothing is an error anyway.
            return Err(Error::InFile {
                path: path.display().to_string(),
                source: Box::new(Error::Gguf(crate::gguf::GgufError::Truncated {
                    what: "magic".into(),
                    offset: 0,
                    needed: 4,
                    available: 0,
                })),
            });
        }
        // SAFETY: the map is read-only and private to this process. Another process truncating or
        // rewriting the file while it is mapped would be undefined behaviour; like every mmap-based
        // runtime (llama.cpp included) we document that model files must not change while in use.
        let map = unsafe { memmap2::MmapOptions::new().map(&file) }.map_err(io)?;
        Ok(MappedFile { path, map })
    }

    /// Faults every page of the map in now (page tables filled from the page cache, the file read
    /// where it is not cached), so that the first forward pass does not stop at each page it
    /// touches. Uses `MADV_POPULATE_READ` (Linux 5.14+), else reads one byte per page.
    pub fn prefault(&self) {
        self.prefault_pieces(&std::sync::atomic::AtomicU64::new(0), false);
    }

    /// [`MappedFile::prefault`] shared by two threads: the map is cut into 256 KiB pieces, and
    /// each call faults pieces in until none is left, one thread taking them from the front and
    /// the other (`from_back`) from the back. `claimed` (start it at 0) counts the pieces taken
    /// from the front (low 32 bits) and from the back (high 32 bits). `Engine::load` runs it on
    /// a second thread while it parses and builds the tokenizer, then helps.
    ///
    /// Small pieces keep each call short: the kernel holds the process's address-space lock while
    /// it populates, and a thread that maps memory meanwhile (`mmap`, `brk`, `munmap`: the
    /// tokenizer build's allocations) waits for the call in progress (one call over the whole
    /// ~100 MB file cost the tokenizer build ~3 ms of such waits). The two ends keep the
    /// threads off each other's page tables: populating takes the page table's lock, which a
    /// profile showed them spinning on when both took pieces from the front.
    pub fn prefault_pieces(&self, claimed: &std::sync::atomic::AtomicU64, from_back: bool) {
        const PIECE: usize = 256 << 10;
        let len = self.map.len();
        let pieces = len.div_ceil(PIECE) as u64;
        loop {
            let c = claimed.fetch_add(if from_back { 1 << 32 } else { 1 }, std::sync::atomic::Ordering::Relaxed);
            let (front, back) = (c & 0xffff_ffff, c >> 32);
            if front + back >= pieces {
                return;
            }
            let i = if from_back { pieces - 1 - back } else { front } as usize;
            let (at, n) = (i * PIECE, PIECE.min(len - i * PIECE));
            if self.map.advise_range(memmap2::Advice::PopulateRead, at, n).is_err() {
                let x = self.map[at..at + n].iter().step_by(4096).fold(0u8, |a, &b| a ^ b);
                std::hint::black_box(x);
            }
        }
    }

    /// Makes every later [`MappedFile::prefault_pieces`] call with `claimed` return at once.
    pub fn stop_prefault(claimed: &std::sync::atomic::AtomicU64) {
        // Front count 2^31: more than any map has pieces, with room below the back count's bits.
        claimed.store(1 << 31, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Wraps an error with this file's path.
    pub fn context(&self, e: impl Into<Error>) -> Error {
        Error::InFile { path: self.path.display().to_string(), source: Box::new(e.into()) }
    }

    /// Parses the file's GGUF structure; errors name the file.
    pub fn gguf(&self) -> Result<crate::gguf::Gguf<'_>> {
        crate::gguf::Gguf::parse(self.bytes()).map_err(|e| self.context(e))
    }
}
