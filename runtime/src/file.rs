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
    /// touches: `Engine::load` runs this on a second thread while it parses and builds the
    /// tokenizer. Uses `MADV_POPULATE_READ` (Linux 5.14+), else reads one byte per page.
    pub fn prefault(&self) {
        if self.map.advise(memmap2::Advice::PopulateRead).is_err() {
            let x = self.map.iter().step_by(4096).fold(0u8, |a, &b| a ^ b);
            std::hint::black_box(x);
        }
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
