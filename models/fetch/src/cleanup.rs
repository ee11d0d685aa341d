//! Temporary files and folders that must not outlive an interrupted process.
//!
//! Every temporary path the tools create (a download folder, a partial model, a
//! `pith-compress` output being written) is recorded here while it exists. Dropping the
//! value removes it as usual (errors and panics unwind through the drop); a Ctrl-C or SIGTERM
//! handler calls [`remove_all_and_exit`], which removes whatever is recorded and exits while
//! holding the registry, so no new temporary can appear in between. The binaries install that
//! handler ([`exit_on_interrupt`], or their own that ends in [`remove_all_and_exit`]).

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

static TEMPS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn registry() -> MutexGuard<'static, Vec<PathBuf>> {
    // A panic while holding the lock leaves the list as it was: still usable.
    TEMPS.lock().unwrap_or_else(|p| p.into_inner())
}

/// A temporary value (`tempfile`'s `NamedTempFile` or `TempDir`) recorded in the registry
/// under `path` until it is dropped or [`Tracked::finish`]ed.
pub struct Tracked<T> {
    inner: Option<T>,
    path: PathBuf,
}

impl<T> Tracked<T> {
    /// Creates the temporary with `make` while holding the registry (a signal handler cannot
    /// run [`remove_all_and_exit`] between its creation and its recording) and records
    /// `path_of` it.
    pub fn create<E>(make: impl FnOnce() -> Result<T, E>, path_of: impl FnOnce(&T) -> &Path) -> Result<Self, E> {
        let mut reg = registry();
        let inner = make()?;
        let path = path_of(&inner).to_path_buf();
        reg.push(path.clone());
        Ok(Tracked { inner: Some(inner), path })
    }

    /// The path recorded.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Consumes the temporary with `f` (a rename into place, say) while holding the registry,
    /// then forgets the path.
    pub fn finish<R>(mut self, f: impl FnOnce(T) -> R) -> R {
        let mut reg = registry();
        let r = match self.inner.take() {
            Some(t) => f(t),
            None => unreachable!("a Tracked value holds its temporary until it is finished or dropped"),
        };
        forget(&mut reg, &self.path);
        r
    }
}

impl<T> std::ops::Deref for Tracked<T> {
    type Target = T;
    fn deref(&self) -> &T {
        match &self.inner {
            Some(t) => t,
            None => unreachable!("a Tracked value holds its temporary until it is finished or dropped"),
        }
    }
}

impl<T> std::ops::DerefMut for Tracked<T> {
    fn deref_mut(&mut self) -> &mut T {
        match &mut self.inner {
            Some(t) => t,
            None => unreachable!("a Tracked value holds its temporary until it is finished or dropped"),
        }
    }
}

impl<T: std::io::Write> std::io::Write for Tracked<T> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        (**self).write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        (**self).flush()
    }
}

impl<T> Drop for Tracked<T> {
    fn drop(&mut self) {
        if self.inner.is_none() {
            return;
        }
        let mut reg = registry();
        // The temporary's own drop removes it; only then is it forgotten.
        drop(self.inner.take());
        forget(&mut reg, &self.path);
    }
}

fn forget(reg: &mut Vec<PathBuf>, path: &Path) {
    if let Some(i) = reg.iter().position(|p| p == path) {
        reg.swap_remove(i);
    }
}

/// Removes every recorded temporary and exits with `code`, never returning: the registry stays
/// locked, so the rest of the program cannot create or rename a temporary meanwhile.
pub fn remove_all_and_exit(code: i32) -> ! {
    let reg = registry();
    for p in reg.iter() {
        let _ = if p.is_dir() { std::fs::remove_dir_all(p) } else { std::fs::remove_file(p) };
    }
    std::process::exit(code)
}

/// Installs a Ctrl-C / SIGTERM handler that removes the temporaries and exits with status 130
/// (as a shell reports an interrupted command).
pub fn exit_on_interrupt() -> Result<(), String> {
    ctrlc::set_handler(|| {
        use std::io::Write;
        let _ = writeln!(std::io::stderr());
        remove_all_and_exit(130)
    })
    .map_err(|e| format!("installing the Ctrl-C handler: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracked_paths_are_recorded_until_dropped_or_finished() {
        let dir = tempfile::tempdir().unwrap();
        let a = Tracked::create(|| tempfile::tempdir_in(dir.path()), |d| d.path()).unwrap();
        let pa = a.path().to_path_buf();
        assert!(registry().contains(&pa));
        drop(a);
        assert!(!registry().contains(&pa) && !pa.exists());
        let f = Tracked::create(|| tempfile::NamedTempFile::new_in(dir.path()), |f| f.path()).unwrap();
        let pf = f.path().to_path_buf();
        let dest = dir.path().join("kept");
        f.finish(|t| t.persist(&dest)).unwrap();
        assert!(!registry().contains(&pf) && dest.exists());
    }
}
