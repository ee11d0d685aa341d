//! Temporary files and folders that must not outlive an interrupted process.
//!
//! Every temporary path the tools create (a download folder, a partial model, a
//! `pith-compress` output being written) is recorded here while it exists, and so is every
//! child process writing into one (pip: [`TrackedChild`]). Dropping the value removes it as
//! usual (errors and panics unwind through the drop; a child is killed); a Ctrl-C or SIGTERM
//! handler calls [`remove_all_and_exit`], which kills the children, then removes whatever is
//! recorded and exits while holding the registry, so no new temporary can appear in between. The binaries install that
//! handler ([`exit_on_interrupt`], or their own that ends in [`remove_all_and_exit`]).

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus};
use std::sync::{Mutex, MutexGuard};

static TEMPS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
/// Lock order: [`TEMPS`] before [`CHILDREN`], never the other way round.
static CHILDREN: Mutex<Vec<Child>> = Mutex::new(Vec::new());

fn registry() -> MutexGuard<'static, Vec<PathBuf>> {
    // A panic while holding the lock leaves the list as it was: still usable.
    TEMPS.lock().unwrap_or_else(|p| p.into_inner())
}

fn children() -> MutexGuard<'static, Vec<Child>> {
    CHILDREN.lock().unwrap_or_else(|p| p.into_inner())
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

/// A child process recorded in the registry until it has ended: one that writes into a
/// temporary folder (pip downloading into it) must be stopped before the folder is removed,
/// or it carries on and writes there again. Dropping it before it has ended kills it. On Unix
/// it runs in a process group of its own, killed as a whole: whatever it started goes too
/// (pyenv's shim runs `python -m pip` as a grandchild, which outlives a killed child).
pub struct TrackedChild {
    pid: u32,
}

impl TrackedChild {
    /// Spawns `cmd` while holding the registry (as [`Tracked::create`]) and records the child.
    /// Its stdout and stderr, where piped, are handed back.
    pub fn spawn(cmd: &mut Command) -> io::Result<(TrackedChild, Option<ChildStdout>, Option<ChildStderr>)> {
        #[cfg(unix)]
        std::os::unix::process::CommandExt::process_group(cmd, 0);
        let _reg = registry();
        let mut child = cmd.spawn()?;
        let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
        let pid = child.id();
        children().push(child);
        Ok((TrackedChild { pid }, stdout, stderr))
    }

    /// [`Child::try_wait`]; once the child has ended it is forgotten.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        let mut children = children();
        let Some(i) = children.iter().position(|c| c.id() == self.pid) else {
            return Err(io::Error::other("the child process was already waited for"));
        };
        let status = children[i].try_wait();
        if matches!(status, Ok(Some(_))) {
            // Already waited for: try_wait reaped it.
            #[allow(clippy::zombie_processes)]
            drop(children.swap_remove(i));
        }
        status
    }
}

impl Drop for TrackedChild {
    fn drop(&mut self) {
        let mut children = children();
        if let Some(i) = children.iter().position(|c| c.id() == self.pid) {
            kill(&mut children.swap_remove(i));
        }
    }
}

/// Kills `child` (and on Unix its process group, see [`TrackedChild`]) and waits for it.
fn kill(child: &mut Child) {
    #[cfg(unix)]
    if let Ok(pid) = i32::try_from(child.id()) {
        use nix::sys::signal::{killpg, Signal};
        let _ = killpg(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Kills every recorded child, removes every recorded temporary and exits with `code`, never
/// returning: the registry stays locked, so the rest of the program cannot create or rename a
/// temporary (or start a child) meanwhile.
pub fn remove_all_and_exit(code: i32) -> ! {
    let reg = registry();
    children().iter_mut().for_each(kill);
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

    #[test]
    fn tracked_children_are_recorded_until_ended_or_killed() {
        let recorded = |pid: u32| children().iter().any(|c| c.id() == pid);
        let (mut quick, _, _) = TrackedChild::spawn(&mut Command::new("true")).unwrap();
        let status = loop {
            if let Some(s) = quick.try_wait().unwrap() {
                break s;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        assert!(status.success() && !recorded(quick.pid));
        drop(quick);
        // A shell that starts a grandchild (as pyenv's shim does) and waits for it: both go.
        let dir = tempfile::tempdir().unwrap();
        let flag = dir.path().join("grandchild-survived");
        let script = format!("sh -c 'sleep 1; touch {}' & wait", flag.display());
        let (mut slow, _, _) = TrackedChild::spawn(Command::new("sh").args(["-c", &script])).unwrap();
        assert!(recorded(slow.pid) && slow.try_wait().unwrap().is_none());
        let t = std::time::Instant::now();
        let pid = slow.pid;
        drop(slow);
        assert!(!recorded(pid) && t.elapsed() < std::time::Duration::from_secs(1));
        std::thread::sleep(std::time::Duration::from_millis(1500));
        #[cfg(unix)]
        assert!(!flag.exists(), "the grandchild outlived its killed parent");
    }
}
