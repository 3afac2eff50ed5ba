//! The spool's I/O thread: one thread that writes and renames committed
//! messages and removes finished ones, in batches.
//!
//! Handing each commit to the blocking pool costs a thread wake-up per
//! message, and with the default `spool_sync = "filesystem"` every one of
//! those threads then sleeps until the shared `syncfs` wakes it again: two
//! context switches per message on top of the work. Here the async side
//! queues a job and waits on a oneshot; the thread takes every job queued
//! at the time, writes and renames the commits, runs one sync (through the
//! queue's [`GroupSync`], so its count and its error handling are shared)
//! and then answers them all. The order that makes a 250 safe is kept:
//! a commit is answered only after a sync that started after its rename.
//!
//! With `spool_sync = "file"` commits do not come here: each needs its own
//! `fdatasync`, and those run in parallel on the blocking pool, where the
//! device can merge them; a single thread would do them one by one.
//! Removals come here in both modes (they need no sync).

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;

use tokio::sync::oneshot;
use tracing::error;

use super::group_sync::GroupSync;
use super::{SpoolError, finish_file, ignore_missing};

/// Jobs taken in one batch at most, so answers are not held back for long
/// behind a burst.
const MAX_BATCH: usize = 256;

/// A message to write (its content and trailer) and move into the queue.
pub(super) struct CommitJob {
    /// The file in `incoming/` when the content spilled.
    pub(super) file: Option<File>,
    pub(super) tmp: PathBuf,
    pub(super) dest: PathBuf,
    /// Content not yet written; handed back on success.
    pub(super) buffered: Vec<u8>,
    /// The envelope and footer.
    pub(super) tail: Vec<u8>,
}

impl CommitJob {
    /// Writes the rest of the file (synced first when `sync_file`) and
    /// moves it into place; returns where it is and the content given.
    pub(super) fn write(self, sync_file: bool) -> Result<(PathBuf, Vec<u8>), SpoolError> {
        finish_file(self.file, &self.tmp, &self.dest, &self.buffered, &self.tail, sync_file)?;
        Ok((self.dest, self.buffered))
    }
}

/// A commit whose sync failed: its file is removed (the client will be
/// told to retry; a second copy must not be delivered) and the error names
/// the directory.
pub(super) fn unsynced(dest: &Path, source: io::Error) -> SpoolError {
    let _ = fs::remove_file(dest);
    let path = dest.parent().map(Path::to_owned).unwrap_or_default();
    SpoolError::Io { path, source }
}

enum Job {
    Commit(CommitJob, oneshot::Sender<Result<Vec<u8>, SpoolError>>),
    /// Files to remove; the answer, if the caller waits for one.
    Remove(Vec<PathBuf>, Option<oneshot::Sender<io::Result<()>>>),
}

/// The handle of the I/O thread; the thread ends when this is dropped,
/// after the jobs already queued.
#[derive(Debug)]
pub(super) struct Committer {
    jobs: mpsc::Sender<Job>,
}

impl Committer {
    /// Starts the thread; its commits are made durable by `sync`.
    pub(super) fn start(sync: Arc<GroupSync>) -> io::Result<Self> {
        let (jobs, queued) = mpsc::channel();
        std::thread::Builder::new()
            .name("mailgate-spool".into())
            .spawn(move || run(&queued, &sync))?;
        Ok(Self { jobs })
    }

    /// Writes, renames and syncs `job`; returns the content it was given.
    pub(super) async fn commit(&self, job: CommitJob) -> Result<Vec<u8>, SpoolError> {
        let (reply, answer) = oneshot::channel();
        self.send(Job::Commit(job, reply))?;
        answer.await.map_err(|_| SpoolError::Cancelled)?
    }

    /// Removes `paths`, a missing one being no error.
    pub(super) async fn remove(&self, paths: Vec<PathBuf>) -> Result<io::Result<()>, SpoolError> {
        let (reply, answer) = oneshot::channel();
        self.send(Job::Remove(paths, Some(reply)))?;
        answer.await.map_err(|_| SpoolError::Cancelled)
    }

    /// Removes `paths` without waiting: a failure is logged by the thread.
    pub(super) fn discard(&self, paths: Vec<PathBuf>) -> Result<(), SpoolError> {
        self.send(Job::Remove(paths, None))
    }

    fn send(&self, job: Job) -> Result<(), SpoolError> {
        self.jobs.send(job).map_err(|_| SpoolError::Cancelled)
    }
}

fn run(queued: &mpsc::Receiver<Job>, sync: &GroupSync) {
    let mut batch = Vec::new();
    while let Ok(first) = queued.recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match queued.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        do_batch(batch.drain(..), sync);
    }
}

/// Commits first, then one sync for every commit written and their
/// answers, and removals last: they need no sync, and an unlink can wait
/// for the device (on a filesystem mounted with `discard`), which clients
/// waiting for their 250 should not.
fn do_batch(batch: impl Iterator<Item = Job>, sync: &GroupSync) {
    let mut written = Vec::new();
    let mut removals = Vec::new();
    for job in batch {
        match job {
            Job::Commit(job, reply) => match job.write(!sync.whole_filesystem) {
                Ok((dest, buffered)) => written.push((dest, buffered, reply)),
                Err(error) => {
                    let _ = reply.send(Err(error));
                }
            },
            Job::Remove(paths, reply) => removals.push((paths, reply)),
        }
    }
    if !written.is_empty() {
        answer_commits(written, sync);
    }
    for (paths, reply) in removals {
        let result = paths
            .iter()
            .try_for_each(|path| ignore_missing(fs::remove_file(path)).map_err(|error| (path, error)));
        match (reply, result) {
            (Some(reply), result) => {
                let _ = reply.send(result.map_err(|(_, error)| error));
            }
            (None, Err((path, error))) => {
                error!(path = %path.display(), %error, "cannot remove a delivered message from the spool");
            }
            (None, Ok(())) => {}
        }
    }
}

type Written = (PathBuf, Vec<u8>, oneshot::Sender<Result<Vec<u8>, SpoolError>>);

/// Syncs the commits written, then answers them.
fn answer_commits(written: Vec<Written>, sync: &GroupSync) {
    match sync.sync() {
        Ok(()) => {
            for (_, buffered, reply) in written {
                let _ = reply.send(Ok(buffered));
            }
        }
        Err(error) => {
            for (dest, _, reply) in written {
                let source = io::Error::new(error.kind(), error.to_string());
                let _ = reply.send(Err(unsynced(&dest, source)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(dir: &std::path::Path, name: &str) -> CommitJob {
        CommitJob {
            file: None,
            tmp: dir.join("incoming").join(name),
            dest: dir.join("queue").join(name),
            buffered: name.as_bytes().to_vec(),
            tail: b"|tail".to_vec(),
        }
    }

    fn dirs() -> (tempfile::TempDir, Arc<GroupSync>) {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("incoming")).unwrap();
        fs::create_dir(dir.path().join("queue")).unwrap();
        let sync = Arc::new(GroupSync::new(File::open(dir.path().join("queue")).unwrap(), true));
        (dir, sync)
    }

    #[test]
    fn one_sync_covers_a_batch_and_answers_come_after_it() {
        let (dir, sync) = dirs();
        let mut answers = Vec::new();
        let jobs = (0..30).map(|i| {
            let (reply, answer) = oneshot::channel();
            answers.push(answer);
            Job::Commit(job(dir.path(), &format!("m{i}")), reply)
        });
        do_batch(jobs.collect::<Vec<_>>().into_iter(), &sync);
        assert_eq!(sync.done(), 1, "one sync for the thirty commits");
        for (i, mut answer) in answers.into_iter().enumerate() {
            assert_eq!(answer.try_recv().unwrap().unwrap(), format!("m{i}").into_bytes());
            let on_disk = fs::read(dir.path().join("queue").join(format!("m{i}"))).unwrap();
            assert_eq!(on_disk, format!("m{i}|tail").into_bytes());
        }
    }

    #[test]
    fn a_failed_write_fails_its_commit_only_and_removals_need_no_sync() {
        let (dir, sync) = dirs();
        let mut bad = job(dir.path(), "bad");
        bad.tmp = dir.path().join("no-such-dir").join("bad");
        let (bad_reply, mut bad_answer) = oneshot::channel();
        let (good_reply, mut good_answer) = oneshot::channel();
        fs::write(dir.path().join("queue").join("old"), b"x").unwrap();
        let (gone_reply, mut gone_answer) = oneshot::channel();
        let batch = vec![
            Job::Commit(bad, bad_reply),
            Job::Remove(
                vec![dir.path().join("queue/old"), dir.path().join("queue/missing")],
                Some(gone_reply),
            ),
            Job::Commit(job(dir.path(), "good"), good_reply),
        ];
        do_batch(batch.into_iter(), &sync);
        assert!(matches!(bad_answer.try_recv().unwrap(), Err(SpoolError::Io { .. })));
        assert!(good_answer.try_recv().unwrap().is_ok());
        gone_answer.try_recv().unwrap().unwrap();
        assert!(!dir.path().join("queue/old").exists());
        assert_eq!(sync.done(), 1);

        let (reply, mut answer) = oneshot::channel();
        do_batch(
            vec![Job::Remove(vec![dir.path().join("queue/good")], Some(reply))].into_iter(),
            &sync,
        );
        answer.try_recv().unwrap().unwrap();
        assert_eq!(sync.done(), 1, "a batch of removals alone does not sync");
    }

    #[tokio::test]
    async fn the_thread_answers_and_ends_with_its_handle() {
        let (dir, sync) = dirs();
        let committer = Committer::start(Arc::clone(&sync)).unwrap();
        let content = committer.commit(job(dir.path(), "m")).await.unwrap();
        assert_eq!(content, b"m");
        let removed = committer.remove(vec![dir.path().join("queue/m")]).await.unwrap();
        removed.unwrap();
        assert!(!dir.path().join("queue/m").exists());
        drop(committer);
        // The thread holds the last other reference to the sync until it ends.
        while Arc::strong_count(&sync) > 1 {
            tokio::task::yield_now().await;
        }
    }
}
