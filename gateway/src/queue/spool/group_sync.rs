//! Group commit of a directory's entries (and, syncing the whole
//! filesystem, of the files' data too), done in the committing thread.
//!
//! A commit renames its file into the directory, then needs a directory
//! fsync (or a `syncfs`) that *starts* after its rename. Whoever finds no sync running
//! starts one; commits that arrive while it runs wait for the next, which
//! one of them starts, so one fsync covers every commit that arrived during
//! the previous one. No task or channel sits in between: a commit is a
//! single hop from the async runtime to a blocking thread and back.

use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

/// One directory's group commit.
#[derive(Debug)]
pub(super) struct GroupSync {
    dir: File,
    /// Sync the whole filesystem (`syncfs`), files included, not only the
    /// directory.
    pub(super) whole_filesystem: bool,
    state: Mutex<State>,
    finished: Condvar,
    /// Syncs done so far (each covers a batch of commits).
    done: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    /// Generation of the last sync started.
    started: u64,
    /// Generation of the last sync finished.
    finished: u64,
    running: bool,
    /// Commits waiting for a sync (kept to be observed by tests).
    waiting: usize,
    /// The latest failed generation and its error.
    failed: Option<(u64, io::ErrorKind, String)>,
}

impl GroupSync {
    pub(super) fn new(dir: File, whole_filesystem: bool) -> Self {
        Self {
            dir,
            whole_filesystem,
            state: Mutex::default(),
            finished: Condvar::new(),
            done: AtomicU64::new(0),
        }
    }

    /// Syncs done so far.
    pub(super) fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Returns once a directory sync that started after the call has
    /// finished: every rename done before the call is durable. Blocks.
    pub(super) fn sync(&self) -> io::Result<()> {
        let mut state = self.lock();
        let needed = state.started + 1;
        loop {
            if state.finished >= needed {
                return match &state.failed {
                    Some((generation, kind, message)) if *generation >= needed => {
                        Err(io::Error::new(*kind, message.clone()))
                    }
                    _ => Ok(()),
                };
            }
            if state.running {
                state.waiting += 1;
                state = self.finished.wait(state).unwrap_or_else(PoisonError::into_inner);
                state.waiting -= 1;
                continue;
            }
            state.running = true;
            state.started += 1;
            let generation = state.started;
            drop(state);
            let result = if self.whole_filesystem {
                rustix::fs::syncfs(&self.dir).map_err(io::Error::from)
            } else {
                self.dir.sync_all()
            };
            self.done.fetch_add(1, Ordering::Relaxed);
            state = self.lock();
            state.running = false;
            state.finished = generation;
            if let Err(e) = &result {
                state.failed = Some((generation, e.kind(), e.to_string()));
            }
            self.finished.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn commits_waiting_on_a_running_sync_share_the_next_one() {
        let dir = tempfile::tempdir().unwrap();
        let group = Arc::new(GroupSync::new(File::open(dir.path()).unwrap(), false));
        // A sync is running (held by the test): twenty commits arrive.
        {
            let mut state = group.lock();
            state.running = true;
            state.started = 1;
        }
        let threads: Vec<_> = (0..20)
            .map(|_| {
                let group = Arc::clone(&group);
                std::thread::spawn(move || group.sync())
            })
            .collect();
        // Plain threads, no runtime: yielding until all wait is fine here.
        while group.lock().waiting < 20 {
            std::thread::yield_now();
        }
        // The running sync ends; it started before them, so it covers none.
        {
            let mut state = group.lock();
            state.running = false;
            state.finished = 1;
            group.finished.notify_all();
        }
        for thread in threads {
            thread.join().unwrap().unwrap();
        }
        assert_eq!(group.done(), 1, "one sync covered all twenty");
        assert_eq!(group.lock().finished, 2);
        group.sync().unwrap();
        assert_eq!(group.done(), 2, "a later commit needs a sync of its own");
    }

    #[test]
    fn a_failed_sync_fails_the_commits_it_covers_only() {
        let dir = tempfile::tempdir().unwrap();
        let group = GroupSync::new(File::open(dir.path()).unwrap(), false);
        group.lock().failed = Some((0, io::ErrorKind::Other, "earlier".into()));
        group.sync().unwrap();
        group.lock().failed = Some((5, io::ErrorKind::Other, "disk gone".into()));
        group.lock().started = 4;
        group.lock().finished = 5;
        let error = group.sync().unwrap_err();
        assert_eq!(error.to_string(), "disk gone");
    }
}
