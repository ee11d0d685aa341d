//! The model file's bytes in memory (std only): mapped from the file (zero copy), or read once
//! into anonymous memory backed by huge pages. Tensor data is borrowed from those bytes, never
//! copied again.

use crate::{Error, Result};
use std::fs::File;
use std::path::{Path, PathBuf};

/// How a model file's bytes are held in memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WeightMemory {
    /// Read once into anonymous memory that asks for transparent huge pages (Linux; elsewhere
    /// plain pages). Decode streams every weight once per token: with 2 MiB pages the TLB and
    /// the hardware prefetchers follow the stream, with 4 KiB file pages they stop at every page
    /// (gemma3 270M: 56 → 78 tokens/s on one thread). The file's page cache is not mapped, so
    /// resident memory is the weights once, as with a map. Costs one read of the file at load.
    #[default]
    Copy,
    /// Mapped read-only from the file (zero copy): nothing is read until touched, pages are
    /// shared with other processes mapping the same file and the OS may drop them under
    /// memory pressure (phones, small boards).
    Map,
}

/// A model file's bytes, read-only: a map of the file or a copy (see [`WeightMemory`]).
pub struct MappedFile {
    path: PathBuf,
    map: memmap2::Mmap,
    memory: WeightMemory,
}

impl MappedFile {
    /// Maps `path` (zero copy: [`WeightMemory::Map`]).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(path, WeightMemory::Map)
    }

    /// Opens `path`, its bytes held as `memory` says.
    pub fn open_with(path: impl AsRef<Path>, memory: WeightMemory) -> Result<Self> {
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
        let map = match memory {
            // SAFETY: the map is read-only and private to this process. Another process truncating
            // or rewriting the file while it is mapped would be undefined behaviour; like every
            // mmap-based runtime (llama.cpp included) we document that model files must not change
            // while in use (the default, `Copy`, reads the file once and has no such hazard).
            WeightMemory::Map => unsafe { memmap2::MmapOptions::new().map(&file) }.map_err(io)?,
            WeightMemory::Copy => {
                let len = usize::try_from(meta.len())
                    .map_err(|_| io(std::io::Error::other("larger than this machine's address space")))?;
                read_into_huge_pages(&file, len).map_err(io)?
            }
        };
        Ok(MappedFile { path, map, memory })
    }

    /// How this file's bytes are held.
    pub fn memory(&self) -> WeightMemory {
        self.memory
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
        if self.memory == WeightMemory::Copy {
            return; // read in full at open
        }
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

/// `len` bytes of `file` read into a fresh anonymous map that asks for transparent huge pages,
/// then made read-only. A file that shrinks meanwhile is an error (a short read), never a partly
/// filled map. One thread: reading from the page cache runs at memory speed (~20 ms for 100 MB
/// here, huge-page zeroing included), and a helper thread would leave the caller's thread a
/// `std::thread` handle that embedders' leak checkers report (valgrind in the C tests).
fn read_into_huge_pages(file: &File, len: usize) -> std::io::Result<memmap2::Mmap> {
    let mut anon = huge_page_map(len)?;
    read_at(file, &mut anon, 0)?;
    anon.make_read_only()
}

/// A fresh anonymous writable map of `len` bytes that asks for transparent huge pages (Linux;
/// without THP, or with it off, the advice fails or does nothing: plain pages, still correct).
pub(crate) fn huge_page_map(len: usize) -> std::io::Result<memmap2::MmapMut> {
    #[allow(unused_mut)]
    let mut anon = memmap2::MmapOptions::new().len(len).map_anon()?;
    #[cfg(target_os = "linux")]
    {
        let _ = anon.advise(memmap2::Advice::HugePage);
    }
    Ok(anon)
}

/// Fills `buf` with `file`'s bytes from `offset`.
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
    }
    #[cfg(not(unix))]
    {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = file.try_clone()?;
        f.seek(SeekFrom::Start(offset))?;
        f.read_exact(buf)
    }
}
