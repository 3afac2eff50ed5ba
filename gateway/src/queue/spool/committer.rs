//! The spool's I/O thread: one thread that writes committed messages (the
//! ones received in memory appended to the segment log in one write, the
//! others written and renamed into `queue/`) and removes finished ones, in
//! batches.
//!
//! Handing each commit to the blocking pool costs a thread wake-up per
//! message, and with the default `spool_sync = "filesystem"` every one of
//! those threads then sleeps until the shared `syncfs` wakes it again: two
//! context switches per message on top of the work. Here the async side
//! queues a job and waits on a oneshot; the thread takes every job queued
//! at the time, writes the commits, runs one sync (through the queue's
//! [`GroupSync`], so its count and its error handling are shared) and then
//! answers them all. The order that makes a 250 safe is kept: a commit is
//! answered only after a sync that started after its write and rename.
//!
//! With `spool_sync = "file"` commits do not come here: each needs its own
//! `fdatasync`, and those run in parallel on the blocking pool, where the
//! device can merge them; a single thread would do them one by one.
//! Removals come here in both modes (they need no sync): files are
//! unlinked, records of a segment marked done (`segments.rs`).

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tracing::error;

use super::group_sync::GroupSync;
use super::segments::{Appender, Record, Segments};
use super::{FOOTER_LEN, SpoolError, finish_file, ignore_missing};
use crate::queue::id::QueueId;

/// Jobs taken in one batch at most, so answers are not held back for long
/// behind a burst.
const MAX_BATCH: usize = 256;

/// A message to write (its content and trailer) and move into the queue,
/// or, when its content is all in memory, to append to the segment log.
pub(super) struct CommitJob {
    pub(super) id: QueueId,
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

    /// The envelope JSON of the tail.
    fn json(&self) -> &[u8] {
        &self.tail[..self.tail.len().saturating_sub(FOOTER_LEN as usize)]
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

/// What removing a message takes: files to unlink (a missing one being no
/// error) and its record in a segment to mark done.
#[derive(Debug, Default)]
pub(super) struct Removal {
    pub(super) paths: Vec<PathBuf>,
    pub(super) record: Option<(QueueId, u64)>,
}

enum Job {
    Commit(CommitJob, oneshot::Sender<Result<Vec<u8>, SpoolError>>),
    /// A removal; the answer, if the caller waits for one.
    Remove(Removal, Option<oneshot::Sender<Result<(), SpoolError>>>),
}

/// The handle of the I/O thread; the thread ends when this is dropped,
/// after the jobs already queued.
#[derive(Debug)]
pub(super) struct Committer {
    jobs: mpsc::Sender<Job>,
}

/// What the I/O thread works with.
struct Io {
    sync: Arc<GroupSync>,
    segments: Arc<Segments>,
    appender: Appender,
}

impl Committer {
    /// Starts the thread; its commits are made durable by `sync`.
    pub(super) fn start(sync: Arc<GroupSync>, segments: Arc<Segments>) -> io::Result<Self> {
        let (jobs, queued) = mpsc::channel();
        let mut io = Io {
            sync,
            segments,
            appender: Appender::default(),
        };
        std::thread::Builder::new()
            .name("mailgate-spool".into())
            .spawn(move || run(&queued, &mut io, &mut Pacer::default()))?;
        Ok(Self { jobs })
    }

    /// Writes and syncs `job`; returns the content it was given.
    pub(super) async fn commit(&self, job: CommitJob) -> Result<Vec<u8>, SpoolError> {
        let (reply, answer) = oneshot::channel();
        self.send(Job::Commit(job, reply))?;
        answer.await.map_err(|_| SpoolError::Cancelled)?
    }

    /// Carries out `removal`.
    pub(super) async fn remove(&self, removal: Removal) -> Result<Result<(), SpoolError>, SpoolError> {
        let (reply, answer) = oneshot::channel();
        self.send(Job::Remove(removal, Some(reply)))?;
        answer.await.map_err(|_| SpoolError::Cancelled)
    }

    /// Carries out `removal` without waiting: a failure is logged by the thread.
    pub(super) fn discard(&self, removal: Removal) -> Result<(), SpoolError> {
        self.send(Job::Remove(removal, None))
    }

    fn send(&self, job: Job) -> Result<(), SpoolError> {
        self.jobs.send(job).map_err(|_| SpoolError::Cancelled)
    }
}

fn run(queued: &mpsc::Receiver<Job>, io: &mut Io, pacer: &mut Pacer) {
    let mut batch = Vec::new();
    while let Ok(first) = queued.recv() {
        batch.push(first);
        take_queued(queued, &mut batch);
        // Removals need no sync and do not wait; a batch with a commit
        // waits for the gap, and what came meanwhile shares its sync.
        if batch.iter().any(|job| matches!(job, Job::Commit(..))) && pacer.wait() {
            take_queued(queued, &mut batch);
        }
        if let Some(took) = do_batch(batch.drain(..), io) {
            pacer.synced(took);
        }
    }
}

/// Adds the jobs queued meanwhile to `batch`, up to [`MAX_BATCH`].
fn take_queued(queued: &mpsc::Receiver<Job>, batch: &mut Vec<Job>) {
    while batch.len() < MAX_BATCH {
        match queued.try_recv() {
            Ok(job) => batch.push(job),
            Err(_) => break,
        }
    }
}

/// The longest a commit waits before its sync for more commits to share it.
const MAX_GAP: Duration = Duration::from_millis(2);

/// Spaces the syncs out under load: a batch with a commit (removals may
/// come before it) that comes right after a sync waits, before its own sync
/// starts, until twice as long as that sync took has passed since it ended
/// (at most [`MAX_GAP`]), so that the commits of more sessions share it:
/// what was queued meanwhile joins the batch. Without the gap, under load a
/// sync starts the moment the previous one ends and covers the one or two
/// commits written during it; a `syncfs` costs the thread about 80 us of
/// CPU (BENCHMARKS.md, section 1). A commit that comes after a quiet moment
/// waits for nothing.
#[derive(Debug, Default)]
struct Pacer {
    /// When the last sync ended and how long it took.
    last: Option<(Instant, Duration)>,
    /// Gaps waited so far.
    waits: u64,
}

impl Pacer {
    /// A sync that took `took` has just ended.
    fn synced(&mut self, took: Duration) {
        self.last = Some((Instant::now(), took));
    }

    /// How long a commit that comes at `now` should wait.
    fn gap(&self, now: Instant) -> Duration {
        self.last
            .map(|(ended, took)| {
                took.saturating_mul(2)
                    .min(MAX_GAP)
                    .saturating_sub(now.saturating_duration_since(ended))
            })
            .unwrap_or_default()
    }

    /// Waits for the gap; true if there was one.
    fn wait(&mut self) -> bool {
        let gap = self.gap(Instant::now());
        if gap.is_zero() {
            return false;
        }
        #[allow(clippy::disallowed_methods, reason = "the spool's own thread, not a runtime worker")]
        std::thread::sleep(gap);
        self.waits += 1;
        true
    }
}

/// Where a commit was written.
enum Written {
    File(PathBuf),
    Record(QueueId),
}

type Reply = oneshot::Sender<Result<Vec<u8>, SpoolError>>;

/// Commits first (the ones kept in memory appended to the segment log in
/// one write), then one sync for every commit written and their answers,
/// and removals last: they need no sync, and an unlink can wait for the
/// device (on a filesystem mounted with `discard`), which clients waiting
/// for their 250 should not.
///
/// Returns how long the sync took, if there was one.
fn do_batch(batch: impl Iterator<Item = Job>, io: &mut Io) -> Option<Duration> {
    let mut written = Vec::new();
    let mut appended = Vec::new();
    let mut removals = Vec::new();
    for job in batch {
        match job {
            Job::Commit(job, reply) if job.file.is_none() => appended.push((job, reply)),
            Job::Commit(job, reply) => match job.write(!io.sync.whole_filesystem) {
                Ok((dest, buffered)) => written.push((Written::File(dest), buffered, reply)),
                Err(error) => {
                    let _ = reply.send(Err(error));
                }
            },
            Job::Remove(removal, reply) => removals.push((removal, reply)),
        }
    }
    if !appended.is_empty() {
        append(appended, io, &mut written);
    }
    let synced = (!written.is_empty()).then(|| {
        let started = Instant::now();
        answer_commits(written, io);
        started.elapsed()
    });
    for (removal, reply) in removals {
        let result = remove(&removal, io);
        match (reply, result) {
            (Some(reply), result) => {
                let _ = reply.send(result.map_err(|(path, source)| SpoolError::Io { path, source }));
            }
            (None, Err((path, error))) => {
                error!(path = %path.display(), %error, "cannot remove a delivered message from the spool");
            }
            (None, Ok(())) => {}
        }
    }
    synced
}

/// Appends the commits kept in memory to the segment log.
fn append(jobs: Vec<(CommitJob, Reply)>, io: &mut Io, written: &mut Vec<(Written, Vec<u8>, Reply)>) {
    let records: Vec<Record<'_>> = jobs
        .iter()
        .map(|(job, _)| Record {
            id: &job.id,
            content: &job.buffered,
            json: job.json(),
        })
        .collect();
    match io.appender.append(&io.segments, &records) {
        Ok(_) => {
            for (job, reply) in jobs {
                written.push((Written::Record(job.id), job.buffered, reply));
            }
        }
        Err(error) => {
            let path = io.segments.dir().to_owned();
            for (_, reply) in jobs {
                let source = io::Error::new(error.kind(), error.to_string());
                let _ = reply.send(Err(SpoolError::Io {
                    path: path.clone(),
                    source,
                }));
            }
        }
    }
}

/// Marks a removed message's record done, then unlinks its files.
fn remove(removal: &Removal, io: &mut Io) -> Result<(), (PathBuf, io::Error)> {
    if let Some((id, segment)) = &removal.record {
        io.appender
            .done(&io.segments, id, *segment)
            .map_err(|error| (io.segments.dir().to_owned(), error))?;
    }
    removal
        .paths
        .iter()
        .try_for_each(|path| ignore_missing(fs::remove_file(path)).map_err(|error| (path.clone(), error)))
}

/// Syncs the commits written, then answers them. When the sync fails,
/// what was written is taken back: files removed, records marked done.
fn answer_commits(written: Vec<(Written, Vec<u8>, Reply)>, io: &mut Io) {
    match io.sync.sync() {
        Ok(()) => {
            for (_, buffered, reply) in written {
                let _ = reply.send(Ok(buffered));
            }
        }
        Err(error) => {
            for (target, _, reply) in written {
                let source = io::Error::new(error.kind(), error.to_string());
                let failed = match target {
                    Written::File(dest) => unsynced(&dest, source),
                    Written::Record(id) => {
                        if let Some(segment) = io.segments.take(&id) {
                            let _ = io.appender.done(&io.segments, &id, segment);
                        }
                        SpoolError::Io {
                            path: io.segments.dir().to_owned(),
                            source,
                        }
                    }
                };
                let _ = reply.send(Err(failed));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fs::OpenOptions;

    use super::*;

    #[test]
    fn a_commit_waits_after_a_sync_twice_as_long_as_it_took_at_most_2_ms() {
        let ms = Duration::from_millis;
        let us = Duration::from_micros;
        let mut pacer = Pacer::default();
        let start = Instant::now();
        assert_eq!(pacer.gap(start), Duration::ZERO, "no sync yet");
        // A sync of 400 us ended at `start`: the gap is what is left of 800 us.
        pacer.last = Some((start, us(400)));
        assert_eq!(pacer.gap(start), us(800));
        assert_eq!(pacer.gap(start + us(150)), us(650));
        assert_eq!(pacer.gap(start + us(800)), Duration::ZERO);
        assert_eq!(pacer.gap(start + ms(50)), Duration::ZERO, "after a quiet moment");
        // A slow sync (a disk that takes 30 ms) costs a commit 2 ms at most.
        pacer.last = Some((start, ms(30)));
        assert_eq!(pacer.gap(start), MAX_GAP);
        assert_eq!(pacer.gap(start + us(600)), us(1400));
        // `synced` records the sync just ended.
        pacer.synced(us(300));
        assert!(pacer.gap(Instant::now()) <= us(600));
        assert!(pacer.gap(Instant::now() + ms(1)).is_zero());
    }

    #[test]
    fn a_batch_with_a_commit_waits_for_the_gap_even_behind_a_removal() {
        let (dir, mut io) = io();
        let (jobs, queued) = mpsc::channel();
        let (reply, mut answer) = oneshot::channel();
        let removal = Removal {
            paths: vec![dir.path().join("queue/delivered")],
            record: None,
        };
        jobs.send(Job::Remove(removal, None)).unwrap();
        jobs.send(Job::Commit(job(dir.path(), "m", false), reply)).unwrap();
        drop(jobs);
        // A sync of 1 ms: the gap is 2 ms. Its end is put a minute ahead,
        // so that a slow machine cannot be past the gap when the batch comes.
        let ahead = Instant::now() + Duration::from_secs(60);
        let mut pacer = Pacer {
            last: Some((ahead, Duration::from_millis(1))),
            waits: 0,
        };
        run(&queued, &mut io, &mut pacer);
        assert_eq!(pacer.waits, 1, "the batch waited for the gap");
        assert_eq!(io.sync.done(), 1, "one sync for the batch");
        answer.try_recv().unwrap().unwrap();

        // Removals alone need no sync: they do not wait.
        let (jobs, queued) = mpsc::channel();
        let removal = Removal {
            paths: vec![dir.path().join("queue/other")],
            record: None,
        };
        jobs.send(Job::Remove(removal, None)).unwrap();
        drop(jobs);
        pacer.last = Some((ahead, Duration::from_millis(1)));
        run(&queued, &mut io, &mut pacer);
        assert_eq!(pacer.waits, 1, "no wait for removals");
    }

    /// A commit of `content`: kept in memory, or spilled to a file in
    /// `incoming/` (as a large message is).
    fn job(dir: &Path, content: &str, spilled: bool) -> CommitJob {
        let id = QueueId::generate();
        let tmp = dir.join("incoming").join(id.as_str());
        let file = spilled.then(|| OpenOptions::new().write(true).create_new(true).open(&tmp).unwrap());
        CommitJob {
            dest: dir.join("queue").join(format!("{id}.msg")),
            id,
            file,
            tmp,
            buffered: content.as_bytes().to_vec(),
            tail: [&b"{}"[..], &[0; FOOTER_LEN as usize]].concat(),
        }
    }

    fn io() -> (tempfile::TempDir, Io) {
        let dir = tempfile::tempdir().unwrap();
        for sub in ["incoming", "queue", "corrupt"] {
            fs::create_dir(dir.path().join(sub)).unwrap();
        }
        let sync = Arc::new(GroupSync::new(File::open(dir.path().join("queue")).unwrap(), true));
        let segments = Segments::open(dir.path().join("segments"), dir.path().join("corrupt")).unwrap();
        let io = Io {
            sync,
            segments: Arc::new(segments),
            appender: Appender::default(),
        };
        (dir, io)
    }

    #[test]
    fn one_write_and_one_sync_cover_a_batch_and_answers_come_after_it() {
        let (dir, mut io) = io();
        let mut answers = Vec::new();
        let mut ids = Vec::new();
        let jobs: Vec<_> = (0..30)
            .map(|i| {
                let (reply, answer) = oneshot::channel();
                answers.push(answer);
                let job = job(dir.path(), &format!("m{i}"), false);
                ids.push(job.id.clone());
                Job::Commit(job, reply)
            })
            .collect();
        do_batch(jobs.into_iter(), &mut io);
        assert_eq!(io.sync.done(), 1, "one sync for the thirty commits");
        let logs = fs::read_dir(dir.path().join("segments")).unwrap().count();
        assert_eq!(logs, 1, "one segment, no file per message");
        assert_eq!(fs::read_dir(dir.path().join("queue")).unwrap().count(), 0);
        for (i, (mut answer, id)) in answers.into_iter().zip(&ids).enumerate() {
            assert_eq!(answer.try_recv().unwrap().unwrap(), format!("m{i}").into_bytes());
            let slot = io.segments.slot(id).unwrap();
            let on_disk = io
                .segments
                .read(slot.segment, slot.offset, slot.content_len + slot.json_len);
            assert_eq!(on_disk.unwrap(), format!("m{i}{{}}").into_bytes());
        }
    }

    #[test]
    fn a_failed_write_fails_its_commit_only_and_removals_need_no_sync() {
        let (dir, mut io) = io();
        let mut bad = job(dir.path(), "bad", true);
        bad.dest = dir.path().join("no-such-dir").join("bad");
        let (bad_reply, mut bad_answer) = oneshot::channel();
        let (good_reply, mut good_answer) = oneshot::channel();
        let (kept_reply, mut kept_answer) = oneshot::channel();
        fs::write(dir.path().join("queue").join("old"), b"x").unwrap();
        let (gone_reply, mut gone_answer) = oneshot::channel();
        let good = job(dir.path(), "good", true);
        let good_dest = good.dest.clone();
        let kept = job(dir.path(), "kept", false);
        let kept_id = kept.id.clone();
        let removal = Removal {
            paths: vec![dir.path().join("queue/old"), dir.path().join("queue/missing")],
            record: None,
        };
        let batch = vec![
            Job::Commit(bad, bad_reply),
            Job::Remove(removal, Some(gone_reply)),
            Job::Commit(good, good_reply),
            Job::Commit(kept, kept_reply),
        ];
        do_batch(batch.into_iter(), &mut io);
        assert!(matches!(bad_answer.try_recv().unwrap(), Err(SpoolError::Io { .. })));
        assert!(good_answer.try_recv().unwrap().is_ok());
        assert!(kept_answer.try_recv().unwrap().is_ok());
        assert_eq!(
            fs::read(&good_dest).unwrap(),
            [&b"good{}"[..], &[0; FOOTER_LEN as usize]].concat()
        );
        gone_answer.try_recv().unwrap().unwrap();
        assert!(!dir.path().join("queue/old").exists());
        assert_eq!(io.sync.done(), 1, "one sync for the file and the record");

        let (reply, mut answer) = oneshot::channel();
        let segment = io.segments.take(&kept_id).unwrap();
        let removal = Removal {
            paths: vec![good_dest.clone()],
            record: Some((kept_id.clone(), segment)),
        };
        do_batch(vec![Job::Remove(removal, Some(reply))].into_iter(), &mut io);
        answer.try_recv().unwrap().unwrap();
        assert!(!good_dest.exists());
        let done = fs::read_to_string(dir.path().join(format!("segments/{segment:016}.done"))).unwrap();
        assert_eq!(done, format!("{kept_id}\n"), "the record is marked done");
        assert_eq!(io.sync.done(), 1, "a batch of removals alone does not sync");
    }

    #[tokio::test]
    async fn the_thread_answers_and_ends_with_its_handle() {
        let (dir, io) = io();
        let sync = Arc::clone(&io.sync);
        let committer = Committer::start(Arc::clone(&sync), Arc::clone(&io.segments)).unwrap();
        let job = job(dir.path(), "m", true);
        let dest = job.dest.clone();
        let content = committer.commit(job).await.unwrap();
        assert_eq!(content, b"m");
        let removed = committer
            .remove(Removal {
                paths: vec![dest.clone()],
                record: None,
            })
            .await
            .unwrap();
        removed.unwrap();
        assert!(!dest.exists());
        drop(committer);
        // The thread holds the last other reference to the sync until it ends.
        while Arc::strong_count(&sync) > 2 {
            tokio::task::yield_now().await;
        }
    }
}
