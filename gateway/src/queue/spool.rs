//! The on-disk spool.
//!
//! Layout under the spool directory:
//!
//! - `incoming/ID`: a message being received. Never delivered; removed at
//!   start-up (its client got no 250).
//! - `segments/SEQ.log`: accepted messages received in memory (under 128
//!   KiB), appended by the spool's I/O thread with the default
//!   `spool_sync = "filesystem"`, and `SEQ.done`, those that left
//!   (`segments.rs`).
//! - `queue/ID.msg`: an accepted message with a file of its own (a large
//!   one, one committed with `spool_sync = "file"`, one released from the
//!   quarantine, or one waiting for a retry): the content, then the
//!   envelope as JSON, then a 20-octet footer (`MGQ1`, content length,
//!   envelope length, CRC-32 of the envelope).
//! - `queue/ID.state`: delivery state, replaced atomically after attempts.
//! - `corrupt/`: entries that could not be read, kept for an operator.
//!
//! Commit order, so that nothing acknowledged is ever lost: append the
//! record to the active segment, or write the file in `incoming/` and
//! rename it into `queue/`; make that durable, and only then answer 250.
//! Durable means a `syncfs` of the spool's filesystem that started after
//! the write or the rename (the default), or with `spool_sync = "file"`
//! an `fdatasync` of the file before the rename and an fsync of `queue/`
//! after it. Either sync is shared by every commit waiting at the time
//! (group commit, `group_sync.rs`). By default a commit is a job for the
//! spool's I/O thread (`committer.rs`), which batches the commits queued
//! at the time under one sync; with `"file"` it is one hop to a blocking
//! thread. The content of small messages is also kept in memory for their
//! first delivery (`cache.rs`). State files and
//! removals are not fsynced: they survive a process crash (the page cache
//! does), and a power loss at worst delivers a message twice.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::task::spawn_blocking;

use super::envelope::{DeliveryState, Envelope};
use super::id::QueueId;

mod cache;
mod committer;
mod group_sync;
mod quarantine;
mod segments;
mod writer;

pub use cache::Content;
use cache::ContentCache;
use committer::{CommitJob, Committer, Removal, unsynced};
use group_sync::GroupSync;
pub use quarantine::Quarantined;
use segments::Segments;
pub use writer::SpoolWriter;

const MAGIC: &[u8; 4] = b"MGQ1";
const FOOTER_LEN: u64 = 20;

/// Errors of the spool.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// A file system operation failed.
    #[error("spool I/O error on {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// A queue entry could not be read back.
    #[error("corrupt spool entry {id}: {reason}")]
    Corrupt {
        /// The entry's file name.
        id: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Another process has the spool open.
    #[error("spool {} is in use by another mailgate process", path.display())]
    Locked {
        /// The spool directory.
        path: PathBuf,
    },
    /// A blocking task was cancelled (the runtime is shutting down).
    #[error("spool task cancelled")]
    Cancelled,
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A message in the queue, as the delivery engine needs it.
#[derive(Clone, Debug)]
pub struct StoredMessage {
    /// Its id.
    pub id: QueueId,
    /// Its envelope.
    pub envelope: Envelope,
    /// Where delivery stands.
    pub state: DeliveryState,
    /// Content length in octets.
    pub content_len: u64,
}

/// The spool directory.
#[derive(Debug)]
pub struct Spool {
    incoming: PathBuf,
    queue: PathBuf,
    corrupt: PathBuf,
    quarantine: PathBuf,
    queue_sync: Arc<GroupSync>,
    quarantine_sync: Arc<GroupSync>,
    /// The I/O thread: removals, and the queue's commits with
    /// `spool_sync = "filesystem"`.
    committer: Committer,
    cache: ContentCache,
    /// The segment log and where each of its messages is.
    segments: Arc<Segments>,
    /// Messages committed by this process that have no state file yet:
    /// their removal skips the state file's `unlink`.
    stateless: Mutex<HashSet<QueueId>>,
    /// Held while the spool is open: a second gateway on the same spool
    /// would delete this one's messages in progress.
    _lock: File,
}

/// How a commit is made durable before its 250 (`server.spool_sync`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpoolSync {
    /// The file is written and renamed without a sync of its own; one
    /// `syncfs` of the spool's filesystem, started after the rename, makes
    /// the data and the directory entry durable, shared by every commit
    /// waiting at the time. Also flushes whatever else is dirty on that
    /// filesystem: best with the spool on a filesystem of its own.
    #[default]
    Filesystem,
    /// `fdatasync` of each file, then a directory fsync shared by the
    /// commits waiting at the time (what Postfix does, one file at a time).
    File,
}

impl Spool {
    /// Opens the spool at `root` with the default [`SpoolSync`].
    pub fn open(root: &Path) -> Result<Self, SpoolError> {
        Self::open_with(root, SpoolSync::default())
    }

    /// Opens (creating if needed) the spool at `root`, takes its lock, and
    /// clears `incoming/`.
    pub fn open_with(root: &Path, sync: SpoolSync) -> Result<Self, SpoolError> {
        let incoming = root.join("incoming");
        let queue = root.join("queue");
        let corrupt = root.join("corrupt");
        let quarantine = root.join("quarantine");
        for dir in [&incoming, &queue, &corrupt, &quarantine] {
            fs::create_dir_all(dir).map_err(io_error(dir))?;
        }
        let lock = lock_spool(root)?;
        for entry in fs::read_dir(&incoming).map_err(io_error(&incoming))? {
            let path = entry.map_err(io_error(&incoming))?.path();
            fs::remove_file(&path).map_err(io_error(&path))?;
        }
        let queue_dir = File::open(&queue).map_err(io_error(&queue))?;
        let quarantine_dir = File::open(&quarantine).map_err(io_error(&quarantine))?;
        let queue_sync = Arc::new(GroupSync::new(queue_dir, sync == SpoolSync::Filesystem));
        let segments = root.join("segments");
        let segments = Arc::new(Segments::open(segments.clone(), corrupt.clone()).map_err(io_error(&segments))?);
        Ok(Self {
            committer: Committer::start(Arc::clone(&queue_sync), Arc::clone(&segments)).map_err(io_error(root))?,
            segments,
            queue_sync,
            quarantine_sync: Arc::new(GroupSync::new(quarantine_dir, sync == SpoolSync::Filesystem)),
            cache: ContentCache::default(),
            stateless: Mutex::default(),
            incoming,
            queue,
            corrupt,
            quarantine,
            _lock: lock,
        })
    }

    /// How many `queue/` directory syncs were done: fewer than commits
    /// when commits share them.
    pub fn directory_syncs(&self) -> u64 {
        self.queue_sync.done()
    }

    /// Starts writing a new message.
    pub fn create(&self) -> SpoolWriter {
        SpoolWriter::new(&self.incoming)
    }

    /// Makes the message durable: after this returns `Ok`, it survives a
    /// crash or power loss, and the 250 may be sent.
    pub async fn commit(&self, writer: SpoolWriter, envelope: Envelope) -> Result<StoredMessage, SpoolError> {
        let dest = self.file_path(writer.id());
        let (id, content_len, whole, job) = prepare(writer, &envelope, dest)?;
        let buffered = if self.queue_sync.whole_filesystem {
            self.committer.commit(job).await?
        } else {
            seal(job, &self.queue_sync).await?
        };
        if whole {
            self.cache.keep(&id, buffered);
        }
        self.stateless().insert(id.clone());
        Ok(StoredMessage {
            state: DeliveryState::for_envelope(&envelope),
            id,
            envelope,
            content_len,
        })
    }

    /// Keeps a message in `quarantine/` instead of the queue, durably (same
    /// commit order as `commit`), with the reason in its envelope. It is
    /// never delivered; an operator can inspect it there.
    pub async fn quarantine(&self, writer: SpoolWriter, envelope: Envelope) -> Result<QueueId, SpoolError> {
        let dest = self.quarantine.join(format!("{}.msg", writer.id()));
        let (id, _, _, job) = prepare(writer, &envelope, dest)?;
        seal(job, &self.quarantine_sync).await?;
        Ok(id)
    }

    /// Reads every queued message back (at start-up), from the files of
    /// `queue/` and the segments. Unreadable entries are moved (damaged
    /// segments copied) to `corrupt/` and reported beside the good ones.
    pub fn scan(&self) -> Result<(Vec<StoredMessage>, Vec<SpoolError>), SpoolError> {
        let (mut messages, mut problems) = self.scan_files()?;
        // A message found in both moved out of its segment just before a
        // crash; its file is the copy that counts.
        let moved = messages.iter().map(|m| m.id.clone()).collect();
        let (found, damaged) = self.segments.scan(&moved).map_err(io_error(self.segments.dir()))?;
        problems.extend(damaged);
        for found in found {
            messages.push(StoredMessage {
                state: self.state_or_default(&found.id, &found.envelope),
                id: found.id,
                envelope: found.envelope,
                content_len: found.content_len,
            });
        }
        messages.sort_by(|a, b| a.id.cmp(&b.id));
        Ok((messages, problems))
    }

    /// The messages with a file of their own.
    fn scan_files(&self) -> Result<(Vec<StoredMessage>, Vec<SpoolError>), SpoolError> {
        let mut messages = Vec::new();
        let mut problems = Vec::new();
        for entry in fs::read_dir(&self.queue).map_err(io_error(&self.queue))? {
            let path = entry.map_err(io_error(&self.queue))?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if let Some(id) = name.strip_suffix(".msg").and_then(QueueId::parse) {
                match self.load(&id) {
                    Ok(message) => messages.push(message),
                    Err(error) => {
                        let _ = fs::rename(&path, self.corrupt.join(name));
                        problems.push(error);
                    }
                }
            } else if let Some(id) = name.strip_suffix(".state").and_then(QueueId::parse) {
                // A message in a segment has no state file: it moves out
                // to a file of its own before its first state is saved.
                if !self.file_path(&id).exists() {
                    let _ = fs::remove_file(&path);
                }
            } else if name.ends_with(".state.tmp") {
                let _ = fs::remove_file(&path);
            }
        }
        Ok((messages, problems))
    }

    /// Reads one queued message's envelope and state.
    pub fn load(&self, id: &QueueId) -> Result<StoredMessage, SpoolError> {
        let (content_len, envelope) = match self.segments.slot(id) {
            Some(slot) => (slot.content_len, self.segments.envelope(id, slot)?),
            None => {
                let path = self.file_path(id);
                let mut file = File::open(&path).map_err(io_error(&path))?;
                read_trailer(&mut file).map_err(|reason| SpoolError::Corrupt {
                    id: id.to_string(),
                    reason,
                })?
            }
        };
        Ok(StoredMessage {
            state: self.state_or_default(id, &envelope),
            id: id.clone(),
            envelope,
            content_len,
        })
    }

    /// The state file's delivery state, or the envelope's initial one.
    fn state_or_default(&self, id: &QueueId, envelope: &Envelope) -> DeliveryState {
        match fs::read(self.state_path(id)) {
            Ok(bytes) => serde_json::from_slice::<DeliveryState>(&bytes)
                .ok()
                .filter(|s| s.recipients.len() == envelope.recipients.len()),
            Err(_) => None,
        }
        .unwrap_or_else(|| DeliveryState::for_envelope(envelope))
    }

    /// Opens the content of a queued message for reading, from memory when
    /// kept; reads past `content_len` must not happen (in the file, the
    /// envelope follows).
    pub async fn open_content(&self, id: &QueueId) -> Result<Content, SpoolError> {
        if let Some(bytes) = self.cache.get(id) {
            return Ok(Content::Memory(bytes, 0));
        }
        let (path, offset) = self.content_at(id);
        let mut file = tokio::fs::File::open(&path).await.map_err(io_error(&path))?;
        if offset > 0 {
            use tokio::io::AsyncSeekExt as _;
            file.seek(SeekFrom::Start(offset)).await.map_err(io_error(&path))?;
        }
        Ok(Content::File(file))
    }

    /// Drops the in-memory copy of a message's content (its attempt is
    /// over and it waits for a retry; the file stays).
    pub fn forget_content(&self, id: &QueueId) {
        self.cache.forget(id);
    }

    /// Reads up to `limit` octets of the start of the content (for the
    /// headers quoted in a bounce).
    pub async fn read_head(&self, message: &StoredMessage, limit: u64) -> Result<Vec<u8>, SpoolError> {
        let take = limit.min(message.content_len);
        if let Some(bytes) = self.cache.get(&message.id) {
            let take = usize::try_from(take).unwrap_or(usize::MAX).min(bytes.len());
            return Ok(bytes[..take].to_vec());
        }
        let (path, offset) = self.content_at(&message.id);
        let source = path.clone();
        let result = spawn_blocking(move || -> io::Result<Vec<u8>> {
            let mut file = File::open(&source)?;
            file.seek(SeekFrom::Start(offset))?;
            let mut out = Vec::new();
            file.take(take).read_to_end(&mut out)?;
            Ok(out)
        })
        .await
        .map_err(|_| SpoolError::Cancelled)?;
        result.map_err(io_error(&path))
    }

    /// Records delivery state (atomic replace, not fsynced; see the module
    /// doc). A message in a segment first moves out to a file of its own.
    pub async fn save_state(&self, id: &QueueId, state: &DeliveryState) -> Result<(), SpoolError> {
        if let Some(slot) = self.segments.slot(id) {
            self.move_out(id, slot).await?;
        }
        self.stateless().remove(id);
        let path = self.state_path(id);
        let json = serde_json::to_vec(state).map_err(|e| SpoolError::Corrupt {
            id: id.to_string(),
            reason: e.to_string(),
        })?;
        let target = path.clone();
        let result = spawn_blocking(move || -> io::Result<()> {
            let mut tmp = target.clone().into_os_string();
            tmp.push(".tmp");
            fs::write(&tmp, &json)?;
            fs::rename(&tmp, &target)
        })
        .await
        .map_err(|_| SpoolError::Cancelled)?;
        result.map_err(io_error(&path))
    }

    /// Removes a message whose every recipient is finished.
    pub async fn remove(&self, id: &QueueId) -> Result<(), SpoolError> {
        self.committer.remove(self.forget(id)).await?
    }

    /// Removes a delivered message without waiting for its files to go (a
    /// failure is logged by the spool's I/O thread). A crash before they
    /// go delivers the message again, as one between the delivery and
    /// `remove` would.
    pub fn discard(&self, id: &QueueId) -> Result<(), SpoolError> {
        self.committer.discard(self.forget(id))
    }

    /// Forgets a message that is to be removed; its files and record.
    fn forget(&self, id: &QueueId) -> Removal {
        self.cache.forget(id);
        let mut removal = Removal::default();
        match self.segments.take(id) {
            Some(segment) => removal.record = Some((id.clone(), segment)),
            None => removal.paths.push(self.file_path(id)),
        }
        if !self.stateless().remove(id) {
            removal.paths.push(self.state_path(id));
        }
        removal
    }

    fn stateless(&self) -> MutexGuard<'_, HashSet<QueueId>> {
        self.stateless.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The file holding a queued message and where its content starts:
    /// its segment, at its record's offset, or its own file, at 0. The
    /// `content_len` octets from there are the content.
    pub fn content_at(&self, id: &QueueId) -> (PathBuf, u64) {
        match self.segments.slot(id) {
            Some(slot) => (self.segments.log_path(slot.segment), slot.offset),
            None => (self.file_path(id), 0),
        }
    }

    /// The file of its own a queued message has or would have.
    fn file_path(&self, id: &QueueId) -> PathBuf {
        self.queue.join(format!("{id}.msg"))
    }

    fn state_path(&self, id: &QueueId) -> PathBuf {
        self.queue.join(format!("{id}.state"))
    }
}

/// Takes an exclusive lock on `root/lock`; released when the file is closed,
/// including when the process dies.
fn lock_spool(root: &Path) -> Result<File, SpoolError> {
    let path = root.join("lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_error(&path))?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(file),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(SpoolError::Locked { path: root.to_owned() }),
        Err(e) => Err(SpoolError::Io { path, source: e.into() }),
    }
}

/// Takes a received message apart for its commit: its id, content length,
/// whether the whole content was in memory, and the job that writes the
/// rest of it with the envelope trailer and moves it to `dest`.
fn prepare(
    mut writer: SpoolWriter,
    envelope: &Envelope,
    dest: PathBuf,
) -> Result<(QueueId, u64, bool, CommitJob), SpoolError> {
    if let Some(source) = writer.failed.take() {
        return Err(SpoolError::Io {
            path: writer.path.clone(),
            source,
        });
    }
    let content_len = writer.len();
    let json = serde_json::to_vec(envelope).map_err(|e| SpoolError::Corrupt {
        id: writer.id.to_string(),
        reason: e.to_string(),
    })?;
    let footer = footer(content_len, &json);
    let mut tail = json;
    tail.extend_from_slice(&footer);
    let whole = writer.file.is_none();
    let job = CommitJob {
        id: writer.id.clone(),
        file: writer.file.take(),
        tmp: writer.path.clone(),
        dest,
        buffered: std::mem::take(&mut writer.buffer),
        tail,
    };
    Ok((writer.id.clone(), content_len, whole, job))
}

/// A commit in one blocking hop (with `spool_sync = "file"`, and into the
/// quarantine): writes the job's file, syncs it if `dir` syncs directories
/// only, renames it and syncs `dir` with the commits of other sessions.
/// Returns the content it was given.
async fn seal(job: CommitJob, dir: &Arc<GroupSync>) -> Result<Vec<u8>, SpoolError> {
    let dir = Arc::clone(dir);
    let written = spawn_blocking(move || -> Result<Vec<u8>, SpoolError> {
        let (dest, buffered) = job.write(!dir.whole_filesystem)?;
        dir.sync().map_err(|source| unsynced(&dest, source))?;
        Ok(buffered)
    })
    .await;
    written.map_err(|_| SpoolError::Cancelled)?
}

fn ignore_missing(result: io::Result<()>) -> io::Result<()> {
    match result {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Writes the rest of the message (`buffered` content, then the `tail`),
/// syncs it and moves it into place.
fn finish_file(
    file: Option<File>,
    tmp: &Path,
    dest: &Path,
    buffered: &[u8],
    tail: &[u8],
    sync_file: bool,
) -> Result<(), SpoolError> {
    let result = (|| -> io::Result<()> {
        let mut file = match file {
            Some(file) => file,
            None => OpenOptions::new().write(true).create_new(true).open(tmp)?,
        };
        // One write for both parts, as a rule (a regular file takes all).
        let written = file.write_vectored(&[io::IoSlice::new(buffered), io::IoSlice::new(tail)])?;
        if written < buffered.len() {
            file.write_all(&buffered[written..])?;
            file.write_all(tail)?;
        } else {
            file.write_all(&tail[written - buffered.len()..])?;
        }
        if sync_file {
            file.sync_data()?;
        }
        fs::rename(tmp, dest)
    })();
    result.map_err(|source| {
        let _ = fs::remove_file(tmp);
        SpoolError::Io {
            path: tmp.to_owned(),
            source,
        }
    })
}

fn footer(content_len: u64, json: &[u8]) -> Vec<u8> {
    let mut footer = Vec::with_capacity(FOOTER_LEN as usize);
    footer.extend_from_slice(MAGIC);
    footer.extend_from_slice(&content_len.to_le_bytes());
    footer.extend_from_slice(&(json.len() as u32).to_le_bytes());
    footer.extend_from_slice(&crc32fast::hash(json).to_le_bytes());
    footer
}

/// Reads and checks the footer and envelope; returns the content length.
fn read_trailer(file: &mut File) -> Result<(u64, Envelope), String> {
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    if len < FOOTER_LEN {
        return Err("file shorter than its footer".into());
    }
    let mut footer = [0u8; FOOTER_LEN as usize];
    file.seek(SeekFrom::Start(len - FOOTER_LEN))
        .map_err(|e| e.to_string())?;
    file.read_exact(&mut footer).map_err(|e| e.to_string())?;
    if &footer[..4] != MAGIC {
        return Err("bad footer magic".into());
    }
    let content_len = u64::from_le_bytes(array(&footer[4..12]));
    let json_len = u64::from(u32::from_le_bytes(array(&footer[12..16])));
    let crc = u32::from_le_bytes(array(&footer[16..20]));
    if content_len
        .checked_add(json_len)
        .and_then(|n| n.checked_add(FOOTER_LEN))
        != Some(len)
    {
        return Err("footer lengths do not match the file size".into());
    }
    let mut json = vec![0u8; usize::try_from(json_len).map_err(|e| e.to_string())?];
    file.seek(SeekFrom::Start(content_len)).map_err(|e| e.to_string())?;
    file.read_exact(&mut json).map_err(|e| e.to_string())?;
    if crc32fast::hash(&json) != crc {
        return Err("envelope checksum mismatch".into());
    }
    let envelope = serde_json::from_slice(&json).map_err(|e| format!("envelope: {e}"))?;
    Ok((content_len, envelope))
}

/// The fixed-size array at the start of `bytes` (zero-padded if short).
fn array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    for (slot, byte) in out.iter_mut().zip(bytes) {
        *slot = *byte;
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::writer::SPILL_BYTES;
    use super::*;
    use crate::queue::{Recipient, RecipientStatus};
    use crate::smtp::command::BodyType;
    use crate::smtp::{Mailbox, ReversePath};

    pub(super) fn envelope() -> Envelope {
        Envelope {
            reverse_path: ReversePath::Mailbox(Mailbox::parse("a@x.test").unwrap()),
            recipients: vec![
                Recipient::new(Mailbox::parse("b@y.test").unwrap()),
                Recipient::new(Mailbox::parse("c@y.test").unwrap()),
            ],
            received_at: SystemTime::UNIX_EPOCH,
            size: 0,
            body: BodyType::SevenBit,
            smtputf8: false,
            eight_bit: false,
            client: None,
            quarantine: None,
            quarantined_by: None,
            hold: None,
            dsn: crate::smtp::dsn::MailDsn::default(),
            requiretls: false,
            tls_optional: false,
        }
    }

    /// A three-octet message, committed.
    pub(super) async fn small(spool: &Spool) -> StoredMessage {
        let mut writer = spool.create();
        writer.write(b"x\r\n").await;
        spool.commit(writer, envelope()).await.unwrap()
    }

    #[tokio::test]
    async fn committed_messages_are_found_by_scan() {
        for sync in [SpoolSync::Filesystem, SpoolSync::File] {
            committed_messages_are_found_by_scan_with(sync).await;
        }
    }

    async fn committed_messages_are_found_by_scan_with(sync: SpoolSync) {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open_with(dir.path(), sync).unwrap();
        assert_eq!(spool.queue_sync.whole_filesystem, sync == SpoolSync::Filesystem);
        let mut small = spool.create();
        small.write(b"Subject: small\r\n\r\nhi\r\n").await;
        let stored = spool.commit(small, envelope()).await.unwrap();
        let mut big = spool.create();
        let chunk = vec![b'x'; 100_000];
        for _ in 0..5 {
            big.write(&chunk).await;
        }
        spool.commit(big, envelope()).await.unwrap();
        assert_eq!(
            spool.directory_syncs(),
            2,
            "one sync per commit when they do not overlap"
        );

        drop(spool);
        let reopened = Spool::open(dir.path()).unwrap();
        let (messages, problems) = reopened.scan().unwrap();
        assert!(problems.is_empty());
        assert_eq!(messages.len(), 2);
        let small = messages.iter().find(|m| m.id == stored.id).unwrap();
        assert_eq!(small.content_len, 22);
        assert_eq!(small.envelope, envelope());
        let big = messages.iter().find(|m| m.id != stored.id).unwrap();
        assert_eq!(big.content_len, 500_000);
        let head = reopened.read_head(small, 1000).await.unwrap();
        assert_eq!(head, b"Subject: small\r\n\r\nhi\r\n");
    }

    #[tokio::test]
    async fn a_spool_is_opened_by_one_process_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let first = Spool::open(dir.path()).unwrap();
        assert!(matches!(Spool::open(dir.path()), Err(SpoolError::Locked { .. })));
        drop(first);
        Spool::open(dir.path()).unwrap();
    }

    #[tokio::test]
    async fn contents_can_be_read_back_and_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let mut writer = spool.create();
        let big = vec![b'a'; SPILL_BYTES + 10];
        writer.write(&big).await;
        writer.write(b"tail").await;
        let mut expected = big.clone();
        expected.extend_from_slice(b"tail");
        assert_eq!(writer.contents().await.unwrap(), expected);
        writer.rewrite(b"new content\r\n").await;
        assert_eq!(writer.contents().await.unwrap(), b"new content\r\n");
        let id = writer.id().clone();
        let stored = spool.commit(writer, envelope()).await.unwrap();
        assert_eq!((stored.id, stored.content_len), (id, 13));
    }

    #[tokio::test]
    async fn quarantined_messages_are_kept_apart() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let mut writer = spool.create();
        writer.write(b"spam\r\n").await;
        let mut env = envelope();
        env.quarantine = Some("looks like spam".into());
        let id = spool.quarantine(writer, env).await.unwrap();
        assert!(dir.path().join("quarantine").join(format!("{id}.msg")).exists());
        assert!(spool.scan().unwrap().0.is_empty(), "never delivered");
    }

    #[tokio::test]
    async fn uncommitted_writes_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let mut writer = spool.create();
        writer.write(&vec![b'x'; SPILL_BYTES * 2]).await;
        drop(writer);
        assert_eq!(fs::read_dir(dir.path().join("incoming")).unwrap().count(), 0);
        assert!(spool.scan().unwrap().0.is_empty());
    }

    #[tokio::test]
    async fn state_is_kept_and_removal_clears_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let stored = small(&spool).await;
        let mut state = stored.state.clone();
        state.attempts = 3;
        state.recipients[0] = RecipientStatus::Delivered;
        spool.save_state(&stored.id, &state).await.unwrap();
        assert_eq!(spool.load(&stored.id).unwrap().state, state);
        spool.remove(&stored.id).await.unwrap();
        assert_eq!(fs::read_dir(dir.path().join("queue")).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn only_messages_given_a_state_have_a_state_file_removed() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let ids = [small(&spool).await, small(&spool).await];
        assert!(spool.stateless().contains(&ids[0].id) && spool.stateless().contains(&ids[1].id));
        spool.save_state(&ids[1].id, &ids[1].state).await.unwrap();
        assert!(!spool.stateless().contains(&ids[1].id), "it has a state file now");
        for stored in &ids {
            spool.remove(&stored.id).await.unwrap();
        }
        assert!(spool.stateless().is_empty());
        assert_eq!(fs::read_dir(dir.path().join("queue")).unwrap().count(), 0);
        // A message found at start-up may have a state file: it is not
        // taken for stateless.
        let stored = small(&spool).await;
        spool.save_state(&stored.id, &stored.state).await.unwrap();
        drop(spool);
        let spool = Spool::open(dir.path()).unwrap();
        assert!(spool.stateless().is_empty());
        spool.remove(&stored.id).await.unwrap();
        assert_eq!(fs::read_dir(dir.path().join("queue")).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn discarded_messages_leave_without_a_wait() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let stored = [small(&spool).await, small(&spool).await, small(&spool).await];
        spool.save_state(&stored[1].id, &stored[1].state).await.unwrap();
        spool.discard(&stored[0].id).unwrap();
        spool.discard(&stored[1].id).unwrap();
        assert!(spool.cache.get(&stored[0].id).is_none(), "forgotten at once");
        // Jobs are done in order: once a later removal is answered, the
        // discards before it are done.
        spool.remove(&stored[2].id).await.unwrap();
        assert_eq!(fs::read_dir(dir.path().join("queue")).unwrap().count(), 0);
        assert!(spool.stateless().is_empty());
    }

    #[tokio::test]
    async fn corrupt_entries_are_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        // A file of its own; damaged segments: `segments::tests`.
        let spool = Spool::open_with(dir.path(), SpoolSync::File).unwrap();
        let stored = small(&spool).await;
        let path = dir.path().join("queue").join(format!("{}.msg", stored.id));
        let mut bytes = fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n - 30] ^= 0xFF; // inside the envelope JSON
        fs::write(&path, bytes).unwrap();
        let (messages, problems) = spool.scan().unwrap();
        assert!(messages.is_empty());
        assert_eq!(problems.len(), 1);
        assert!(dir.path().join("corrupt").join(format!("{}.msg", stored.id)).exists());
    }

    #[tokio::test]
    async fn concurrent_commits_share_directory_syncs() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Arc::new(Spool::open(dir.path()).unwrap());
        let mut tasks = Vec::new();
        for i in 0..50 {
            let spool = Arc::clone(&spool);
            tasks.push(tokio::spawn(async move {
                let mut writer = spool.create();
                writer.write(format!("message {i}\r\n").as_bytes()).await;
                spool.commit(writer, envelope()).await.unwrap().id
            }));
        }
        let mut ids = Vec::new();
        for task in tasks {
            ids.push(task.await.unwrap());
        }
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 50);
        assert_eq!(spool.scan().unwrap().0.len(), 50);
        let syncs = spool.directory_syncs();
        assert!((1..=50).contains(&syncs), "{syncs}");
    }

    #[tokio::test]
    async fn small_messages_are_delivered_from_memory_until_forgotten() {
        use tokio::io::AsyncReadExt;
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let mut writer = spool.create();
        writer.write(b"Subject: kept\r\n\r\nbody\r\n").await;
        let stored = spool.commit(writer, envelope()).await.unwrap();
        // The file is the truth: it is complete on disk.
        assert_eq!(spool.load(&stored.id).unwrap().content_len, stored.content_len);
        let mut content = spool.open_content(&stored.id).await.unwrap();
        assert!(matches!(content, Content::Memory(..)));
        let mut read = Vec::new();
        content.read_to_end(&mut read).await.unwrap();
        assert_eq!(read, b"Subject: kept\r\n\r\nbody\r\n");
        assert_eq!(spool.read_head(&stored, 7).await.unwrap(), b"Subject");
        spool.forget_content(&stored.id);
        let mut content = spool.open_content(&stored.id).await.unwrap();
        assert!(matches!(content, Content::File(_)));
        let mut head = vec![0u8; read.len()];
        content.read_exact(&mut head).await.unwrap();
        assert_eq!(head, read);
        spool.remove(&stored.id).await.unwrap();
        assert_eq!(spool.cache.bytes(), 0);
    }

    #[tokio::test]
    async fn spilled_messages_are_not_kept_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let mut writer = spool.create();
        writer.write(&vec![b'x'; SPILL_BYTES + 1]).await;
        let stored = spool.commit(writer, envelope()).await.unwrap();
        assert!(matches!(
            spool.open_content(&stored.id).await.unwrap(),
            Content::File(_)
        ));
        assert_eq!(spool.cache.bytes(), 0);
    }
}
