//! Output files are written whole or not at all: bytes go to a temporary file beside the
//! destination, which is synced and renamed over it at the end. An existing file is only
//! replaced with `force`, the input is never the output, and a failed write (a full disk)
//! removes the temporary file.

use crate::error::{CompressError, Result};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// A file being written; dropped without [`AtomicOutput::commit`], it leaves nothing behind.
pub struct AtomicOutput {
    dest: PathBuf,
    tmp: PathBuf,
    file: Option<BufWriter<File>>,
    /// Set once the temporary file has been renamed into place.
    committed: bool,
}

impl AtomicOutput {
    /// Starts writing `dest`. Fails if `dest` exists (unless `force`) or is one of `inputs`.
    pub fn create(dest: &Path, force: bool, inputs: &[&Path]) -> Result<Self> {
        check_output(dest, force, inputs)?;
        let dir = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name =
            dest.file_name().ok_or_else(|| CompressError::BadOption(format!("{}: not a file name", dest.display())))?;
        let tmp = dir.join(format!(".{}.pith-tmp-{}", name.to_string_lossy(), std::process::id()));
        let file = File::create(&tmp).map_err(|e| CompressError::io(&tmp, e))?;
        Ok(AtomicOutput {
            dest: dest.to_path_buf(),
            tmp,
            file: Some(BufWriter::with_capacity(1 << 20, file)),
            committed: false,
        })
    }

    /// Appends bytes.
    pub fn write(&mut self, bytes: &[u8]) -> Result<()> {
        let f = self.file.as_mut().ok_or_else(|| CompressError::BadOption("write after commit".into()))?;
        f.write_all(bytes).map_err(|e| CompressError::io(&self.dest, e))
    }

    /// Flushes, syncs and renames the temporary file to the destination.
    pub fn commit(mut self) -> Result<()> {
        let f = self.file.take().ok_or_else(|| CompressError::BadOption("commit twice".into()))?;
        let file = f.into_inner().map_err(|e| CompressError::io(&self.dest, e.into_error()))?;
        file.sync_all().map_err(|e| CompressError::io(&self.dest, e))?;
        drop(file);
        std::fs::rename(&self.tmp, &self.dest).map_err(|e| CompressError::io(&self.dest, e))?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for AtomicOutput {
    fn drop(&mut self) {
        // Close first (a failing flush is moot: the file is going away), then remove it.
        drop(self.file.take());
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// The checks of [`AtomicOutput::create`], for commands that want to fail before long work.
pub fn check_output(dest: &Path, force: bool, inputs: &[&Path]) -> Result<()> {
    for input in inputs {
        if same_file(dest, input) {
            return Err(CompressError::OutputIsInput(dest.to_path_buf()));
        }
    }
    if dest.exists() && !force {
        return Err(CompressError::OutputExists(dest.to_path_buf()));
    }
    if dest.is_dir() {
        return Err(CompressError::BadOption(format!("{} is a directory", dest.display())));
    }
    Ok(())
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

/// Writes `bytes` to `dest` atomically.
pub fn write_file(dest: &Path, force: bool, inputs: &[&Path], bytes: &[u8]) -> Result<()> {
    let mut out = AtomicOutput::create(dest, force, inputs)?;
    out.write(bytes)?;
    out.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_existing_without_force_and_leaves_no_temp_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.gguf");
        std::fs::write(&p, b"old").unwrap();
        assert!(matches!(AtomicOutput::create(&p, false, &[]), Err(CompressError::OutputExists(_))));
        {
            let mut o = AtomicOutput::create(&p, true, &[]).unwrap();
            o.write(b"new").unwrap();
            // dropped without commit
        }
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "temporary file left behind");
        write_file(&p, true, &[], b"new").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
    }

    #[test]
    fn refuses_to_overwrite_the_input() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("in.gguf");
        std::fs::write(&p, b"x").unwrap();
        let alias = dir.path().join(".").join("in.gguf");
        assert!(matches!(check_output(&alias, true, &[&p]), Err(CompressError::OutputIsInput(_))));
    }
}
