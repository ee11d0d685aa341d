//! Output files are written whole or not at all: bytes go to a temporary file beside the
//! destination, which is synced and renamed over it at the end. An existing regular file is
//! only replaced with `force`; anything else (a device such as /dev/full, a FIFO, a socket, a
//! directory) never is; the input is never the output; a failed write (a full disk), a panic,
//! Ctrl-C or SIGTERM removes the temporary file; errors name the destination.

use crate::error::{CompressError, Result};
use pith_fetch::cleanup::Tracked;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use tempfile::NamedTempFile;

/// A file being written; dropped without [`AtomicOutput::commit`], it leaves nothing behind.
/// The temporary file is recorded in `pith_fetch::cleanup`, so Ctrl-C and SIGTERM remove it too
/// (`pith-compress` installs the handler).
pub struct AtomicOutput {
    dest: PathBuf,
    file: Option<BufWriter<Tracked<NamedTempFile>>>,
}

impl AtomicOutput {
    /// Starts writing `dest`. Fails if `dest` is one of `inputs`, is anything but a regular
    /// file (a device, FIFO, socket or directory: never replaced, `force` or not), or is an
    /// existing file without `force`. Errors name `dest`, never the temporary file.
    pub fn create(dest: &Path, force: bool, inputs: &[&Path]) -> Result<Self> {
        check_output(dest, force, inputs)?;
        let dir = folder_of(dest);
        let name =
            dest.file_name().ok_or_else(|| CompressError::BadOption(format!("{}: not a file name", dest.display())))?;
        let prefix = format!(".{}.", name.to_string_lossy());
        let tmp = Tracked::create(
            || {
                // The mode an ordinary new file gets (0666 less the umask), not tempfile's 0600.
                use std::os::unix::fs::PermissionsExt;
                tempfile::Builder::new()
                    .prefix(&prefix)
                    .suffix(".pith-tmp")
                    .permissions(std::fs::Permissions::from_mode(0o666))
                    .tempfile_in(&dir)
            },
            |f| f.path(),
        )
        .map_err(|e| CompressError::io(dest, e))?;
        Ok(AtomicOutput { dest: dest.to_path_buf(), file: Some(BufWriter::with_capacity(1 << 20, tmp)) })
    }

    /// Appends bytes.
    pub fn write(&mut self, bytes: &[u8]) -> Result<()> {
        let f = self.file.as_mut().ok_or_else(|| CompressError::BadOption("write after commit".into()))?;
        f.write_all(bytes).map_err(|e| CompressError::io(&self.dest, e))
    }

    /// Flushes, syncs and renames the temporary file to the destination.
    pub fn commit(mut self) -> Result<()> {
        let f = self.file.take().ok_or_else(|| CompressError::BadOption("commit twice".into()))?;
        let tmp = f.into_inner().map_err(|e| CompressError::io(&self.dest, e.into_error()))?;
        tmp.as_file().sync_all().map_err(|e| CompressError::io(&self.dest, e))?;
        // Checked again just before the rename: something else may have appeared there meanwhile.
        refuse_special(&self.dest)?;
        tmp.finish(|t| t.persist(&self.dest)).map_err(|e| CompressError::io(&self.dest, e.error))?;
        Ok(())
    }
}

fn folder_of(dest: &Path) -> PathBuf {
    match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Refuses a destination that exists and is not a regular file (following symbolic links:
/// a link to a device is a device).
fn refuse_special(dest: &Path) -> Result<()> {
    let Ok(meta) = std::fs::metadata(dest) else { return Ok(()) };
    if meta.is_file() {
        return Ok(());
    }
    let what = file_kind(&meta);
    Err(CompressError::BadOption(format!(
        "{} is {what}, not a regular file; pith-compress writes only regular files (--force does not change that)",
        dest.display()
    )))
}

fn file_kind(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_fifo() {
        "a FIFO (named pipe)"
    } else if t.is_socket() {
        "a socket"
    } else {
        "a special file"
    }
}

/// The checks of [`AtomicOutput::create`], for commands that want to fail before long work.
pub fn check_output(dest: &Path, force: bool, inputs: &[&Path]) -> Result<()> {
    for input in inputs {
        if same_file(dest, input) {
            return Err(CompressError::OutputIsInput(dest.to_path_buf()));
        }
    }
    refuse_special(dest)?;
    if dest.exists() && !force {
        return Err(CompressError::OutputExists(dest.to_path_buf()));
    }
    let dir = folder_of(dest);
    if !dir.is_dir() {
        return Err(CompressError::BadOption(format!(
            "{}: the folder {} does not exist",
            dest.display(),
            dir.display()
        )));
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
    fn refuses_special_files_even_with_force() {
        let dir = tempfile::tempdir().unwrap();
        for dest in [Path::new("/dev/null"), dir.path()] {
            for force in [false, true] {
                let e = check_output(dest, force, &[]).unwrap_err().to_string();
                assert!(e.contains("not a regular file"), "{e}");
            }
        }
        let e = check_output(&dir.path().join("no/such/out.gguf"), false, &[]).unwrap_err().to_string();
        assert!(e.contains("no/such/out.gguf") && e.contains("does not exist") && !e.contains("pith-tmp"), "{e}");
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
