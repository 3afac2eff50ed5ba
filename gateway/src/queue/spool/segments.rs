//! The segment log: with the default `spool_sync = "filesystem"`, a message
//! whose content was kept in memory while it was received (under 128 KiB)
//! is appended to a shared file, `segments/SEQ.log`, instead of getting a
//! file of its own. A file per message costs a create, a rename, a close
//! and an unlink, and on a filesystem mounted with `discard` the unlink
//! waits for the device; here a batch of commits is one write, and a
//! segment is unlinked once, when the last of its messages is gone.
//!
//! - A record is a 21-octet header (`MGR1`, id length, content length,
//!   envelope length, CRC-32 of the id, content and envelope), the id,
//!   the content, then the envelope as JSON. The commit order does not
//!   change: the batch is written, one `syncfs` started after the write
//!   makes it durable, and only then is any of it answered 250.
//! - `segments/SEQ.done` lists (one id per line) the messages of `SEQ.log`
//!   that left: delivered, bounced, removed, or moved out. Like removals
//!   of files, it is not fsynced: it survives a crash of the process.
//! - A message whose first attempt leaves it waiting for a retry moves out
//!   to a file of its own (`queue/ID.msg`, made durable before it is
//!   marked done here), so a message that waits for days does not keep a
//!   segment of thousands of delivered ones on disk.
//! - At start-up every segment is read: records not done are queued again;
//!   a record cut short at the end of a segment is one that was never
//!   answered (the crash came before its sync) and is left out; a record
//!   that fails its checksum is reported and the segment copied to
//!   `corrupt/`. A new process starts a new segment.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, IoSlice, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, PoisonError};

use tracing::{info, warn};

use super::SpoolError;
use crate::queue::envelope::Envelope;
use crate::queue::id::QueueId;

const MAGIC: &[u8; 4] = b"MGR1";
const HEADER_LEN: u64 = 21;
/// A segment takes no more appends once this long.
pub(super) const SEGMENT_BYTES: u64 = 8 << 20;

/// Where a message is in its segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Slot {
    /// The segment's sequence number.
    pub(super) segment: u64,
    /// The offset of the content; the envelope follows it.
    pub(super) offset: u64,
    pub(super) content_len: u64,
    pub(super) json_len: u64,
}

/// A message to append: its id, content and envelope JSON.
pub(super) struct Record<'a> {
    pub(super) id: &'a QueueId,
    pub(super) content: &'a [u8],
    pub(super) json: &'a [u8],
}

/// The segments of one spool: which message is where, and how many of
/// each segment's messages are still queued. Appends and removals are
/// made by the spool's I/O thread (through its [`Appender`]); lookups
/// come from anywhere.
#[derive(Debug)]
pub(super) struct Segments {
    dir: PathBuf,
    corrupt: PathBuf,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    index: HashMap<QueueId, Slot>,
    /// Messages still queued per segment, for every segment on disk.
    live: BTreeMap<u64, u64>,
    /// The segment taking appends, which stays even when empty.
    active: Option<u64>,
    next: u64,
}

/// A segment's queued messages, found at start-up.
pub(super) struct Found {
    pub(super) id: QueueId,
    pub(super) envelope: Envelope,
    pub(super) content_len: u64,
}

impl Segments {
    pub(super) fn open(dir: PathBuf, corrupt: PathBuf) -> io::Result<Self> {
        fs::create_dir_all(&dir)?;
        Ok(Self {
            dir,
            corrupt,
            inner: Mutex::default(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    pub(super) fn log_path(&self, segment: u64) -> PathBuf {
        self.dir.join(format!("{segment:016}.log"))
    }

    fn done_path(&self, segment: u64) -> PathBuf {
        self.dir.join(format!("{segment:016}.done"))
    }

    /// Where `id` is, if it is in a segment.
    pub(super) fn slot(&self, id: &QueueId) -> Option<Slot> {
        self.lock().index.get(id).copied()
    }

    /// Forgets where `id` is (it is leaving); its segment, to be told
    /// through [`Appender::done`].
    pub(super) fn take(&self, id: &QueueId) -> Option<u64> {
        self.lock().index.remove(id).map(|slot| slot.segment)
    }

    /// Reads `len` octets at `offset` of a segment.
    pub(super) fn read(&self, segment: u64, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let file = File::open(self.log_path(segment))?;
        let mut out = vec![0; usize::try_from(len).map_err(io::Error::other)?];
        file.read_exact_at(&mut out, offset)?;
        Ok(out)
    }

    /// The envelope of the message in `slot`.
    pub(super) fn envelope(&self, id: &QueueId, slot: Slot) -> Result<Envelope, SpoolError> {
        let json = self
            .read(slot.segment, slot.offset + slot.content_len, slot.json_len)
            .map_err(|source| SpoolError::Io {
                path: self.log_path(slot.segment),
                source,
            })?;
        serde_json::from_slice(&json).map_err(|e| SpoolError::Corrupt {
            id: id.to_string(),
            reason: format!("envelope: {e}"),
        })
    }

    /// Reads every segment (at start-up, before any commit), leaving out
    /// the messages in `moved` (they have a file of their own, and are
    /// marked done now). Segments with nothing queued are removed, and so
    /// are `.done` files left without their segment.
    pub(super) fn scan(&self, moved: &HashSet<QueueId>) -> io::Result<(Vec<Found>, Vec<SpoolError>)> {
        let (mut segments, mut lists) = (Vec::new(), Vec::new());
        for entry in fs::read_dir(&self.dir)? {
            let name = entry?.file_name();
            let name = name.to_string_lossy();
            let seq = |suffix| name.strip_suffix(suffix).and_then(|s| s.parse::<u64>().ok());
            if let Some(seq) = seq(".log") {
                segments.push(seq);
            } else if let Some(seq) = seq(".done") {
                lists.push(seq);
            }
        }
        segments.sort_unstable();
        for orphan in lists.into_iter().filter(|seq| segments.binary_search(seq).is_err()) {
            self.remove_files(orphan);
        }
        let (mut found, mut problems) = (Vec::new(), Vec::new());
        let mut inner = Inner {
            next: segments.last().map_or(1, |last| last + 1),
            ..Inner::default()
        };
        for segment in segments {
            let live = self.scan_one(segment, moved, &mut inner.index, &mut found, &mut problems)?;
            if live == 0 {
                self.remove_files(segment);
            } else {
                inner.live.insert(segment, live);
            }
        }
        *self.lock() = inner;
        Ok((found, problems))
    }

    fn scan_one(
        &self,
        segment: u64,
        moved: &HashSet<QueueId>,
        index: &mut HashMap<QueueId, Slot>,
        found: &mut Vec<Found>,
        problems: &mut Vec<SpoolError>,
    ) -> io::Result<u64> {
        let path = self.log_path(segment);
        let bytes = fs::read(&path)?;
        let done = match fs::read_to_string(self.done_path(segment)) {
            Ok(text) => text.lines().filter_map(QueueId::parse).collect(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => HashSet::new(),
            Err(e) => return Err(e),
        };
        let mut live = 0;
        let mut at = 0u64;
        let mut set_aside = false;
        let mut stale = String::new();
        while at < bytes.len() as u64 {
            let record = match parse(&bytes, at) {
                Parsed::Record(record) => record,
                Parsed::Cut => {
                    info!(segment = %path.display(), offset = at, "segment ends in a record never committed; left out");
                    break;
                }
                Parsed::Bad { reason, next } => {
                    if !set_aside {
                        set_aside = true;
                        let copy = self.corrupt.join(format!("{segment:016}.log"));
                        if let Err(e) = fs::copy(&path, &copy) {
                            warn!(segment = %path.display(), error = %e, "cannot copy a damaged segment to corrupt/");
                        }
                    }
                    problems.push(SpoolError::Corrupt {
                        id: format!("segment {segment:016} at offset {at}"),
                        reason,
                    });
                    match next {
                        Some(next) => {
                            at = next;
                            continue;
                        }
                        None => break,
                    }
                }
            };
            at = record.end;
            if done.contains(&record.id) {
                continue;
            }
            if moved.contains(&record.id) {
                // Its file may be delivered and gone by the next start.
                stale.push_str(&format!("{}\n", record.id));
                continue;
            }
            let json = &bytes[to_usize(record.slot.offset + record.slot.content_len)..to_usize(record.end)];
            match serde_json::from_slice::<Envelope>(json) {
                Ok(envelope) => {
                    live += 1;
                    index.insert(record.id.clone(), Slot { segment, ..record.slot });
                    found.push(Found {
                        id: record.id,
                        envelope,
                        content_len: record.slot.content_len,
                    });
                }
                Err(e) => problems.push(SpoolError::Corrupt {
                    id: record.id.to_string(),
                    reason: format!("envelope: {e}"),
                }),
            }
        }
        if live > 0 && !stale.is_empty() {
            OpenOptions::new()
                .append(true)
                .create(true)
                .open(self.done_path(segment))?
                .write_all(stale.as_bytes())?;
        }
        Ok(live)
    }

    fn remove_files(&self, segment: u64) {
        for path in [self.log_path(segment), self.done_path(segment)] {
            match fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    warn!(path = %path.display(), error = %e, "cannot remove a finished segment");
                }
                _ => {}
            }
        }
    }
}

/// The I/O thread's side: the segment taking appends and the open `.done`
/// files.
#[derive(Debug, Default)]
pub(super) struct Appender {
    active: Option<(u64, File, u64)>,
    done: HashMap<u64, File>,
}

impl Appender {
    /// Appends `records` in one write (a new segment first when the
    /// active one is full); their slots, in order. On error nothing of
    /// the batch is kept.
    pub(super) fn append(&mut self, segments: &Segments, records: &[Record<'_>]) -> io::Result<Vec<Slot>> {
        let (segment, file, len) = self.writable(segments)?;
        let mut heads = Vec::with_capacity(records.len());
        let mut slots = Vec::with_capacity(records.len());
        let mut at = *len;
        for record in records {
            let id = record.id.as_str().as_bytes();
            let id_len = u8::try_from(id.len()).map_err(io::Error::other)?;
            let mut crc = crc32fast::Hasher::new();
            crc.update(id);
            crc.update(record.content);
            crc.update(record.json);
            let mut head = Vec::with_capacity(HEADER_LEN as usize + id.len());
            head.extend_from_slice(MAGIC);
            head.push(id_len);
            head.extend_from_slice(&(record.content.len() as u64).to_le_bytes());
            head.extend_from_slice(
                &u32::try_from(record.json.len())
                    .map_err(io::Error::other)?
                    .to_le_bytes(),
            );
            head.extend_from_slice(&crc.finalize().to_le_bytes());
            head.extend_from_slice(id);
            let offset = at + head.len() as u64;
            at = offset + (record.content.len() + record.json.len()) as u64;
            slots.push(Slot {
                segment: *segment,
                offset,
                content_len: record.content.len() as u64,
                json_len: record.json.len() as u64,
            });
            heads.push(head);
        }
        let mut slices: Vec<IoSlice<'_>> = heads
            .iter()
            .zip(records)
            .flat_map(|(head, r)| [IoSlice::new(head), IoSlice::new(r.content), IoSlice::new(r.json)])
            .collect();
        if let Err(error) = write_all(file, &mut slices) {
            // A torn batch is cut off, so the next one starts at a record.
            let _ = file.set_len(*len);
            return Err(error);
        }
        *len = at;
        let mut inner = segments.lock();
        *inner.live.entry(*segment).or_default() += records.len() as u64;
        for (record, slot) in records.iter().zip(&slots) {
            inner.index.insert(record.id.clone(), *slot);
        }
        Ok(slots)
    }

    /// The active segment, a new one if there is none or it is full.
    fn writable(&mut self, segments: &Segments) -> io::Result<&mut (u64, File, u64)> {
        let active = match self.active.take() {
            Some(active) if active.2 < SEGMENT_BYTES => active,
            full => {
                if let Some((old, _, _)) = full {
                    self.retire(segments, old);
                }
                let segment = {
                    let mut inner = segments.lock();
                    let segment = inner.next.max(1);
                    inner.next = segment + 1;
                    inner.active = Some(segment);
                    segment
                };
                let file = OpenOptions::new()
                    .append(true)
                    .create_new(true)
                    .open(segments.log_path(segment))?;
                (segment, file, 0)
            }
        };
        Ok(self.active.insert(active))
    }

    /// A full segment takes no more appends; it goes now if nothing in it
    /// is queued.
    fn retire(&mut self, segments: &Segments, segment: u64) {
        let mut inner = segments.lock();
        inner.active = None;
        if inner.live.get(&segment).is_none_or(|n| *n == 0) {
            inner.live.remove(&segment);
            drop(inner);
            self.done.remove(&segment);
            segments.remove_files(segment);
        }
    }

    /// Marks `id` of `segment` done; the segment goes when it was the last
    /// of its messages and it takes no more appends.
    pub(super) fn done(&mut self, segments: &Segments, id: &QueueId, segment: u64) -> io::Result<()> {
        let file = match self.done.entry(segment) {
            std::collections::hash_map::Entry::Occupied(file) => file.into_mut(),
            std::collections::hash_map::Entry::Vacant(slot) => slot.insert(
                OpenOptions::new()
                    .append(true)
                    .create(true)
                    .open(segments.done_path(segment))?,
            ),
        };
        file.write_all(format!("{id}\n").as_bytes())?;
        let mut inner = segments.lock();
        let left = inner.live.get_mut(&segment).map(|n| {
            *n = n.saturating_sub(1);
            *n
        });
        if left == Some(0) && inner.active != Some(segment) {
            inner.live.remove(&segment);
            drop(inner);
            self.done.remove(&segment);
            segments.remove_files(segment);
        }
        Ok(())
    }
}

fn write_all(file: &mut File, mut slices: &mut [IoSlice<'_>]) -> io::Result<()> {
    while !slices.is_empty() {
        match file.write_vectored(slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut slices, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn to_usize(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

struct Parsed1 {
    id: QueueId,
    /// Its slot (segment filled in by the caller).
    slot: Slot,
    /// Where the next record starts.
    end: u64,
}

enum Parsed {
    Record(Parsed1),
    /// The segment ends inside this record.
    Cut,
    /// A damaged record; where the next one starts, if its header can
    /// still be trusted.
    Bad {
        reason: String,
        next: Option<u64>,
    },
}

/// The record at `at` of a segment's `bytes`.
fn parse(bytes: &[u8], at: u64) -> Parsed {
    let rest = &bytes[to_usize(at)..];
    if rest.len() < HEADER_LEN as usize {
        return Parsed::Cut;
    }
    if &rest[..4] != MAGIC {
        return Parsed::Bad {
            reason: "bad record magic".into(),
            next: None,
        };
    }
    let id_len = u64::from(rest[4]);
    let content_len = u64::from_le_bytes(rest[5..13].try_into().unwrap_or_default());
    let json_len = u64::from(u32::from_le_bytes(rest[13..17].try_into().unwrap_or_default()));
    let crc = u32::from_le_bytes(rest[17..21].try_into().unwrap_or_default());
    let total = HEADER_LEN
        .checked_add(id_len)
        .and_then(|n| n.checked_add(content_len))
        .and_then(|n| n.checked_add(json_len));
    let Some(total) = total.filter(|t| *t <= rest.len() as u64) else {
        return Parsed::Cut;
    };
    let body = &rest[HEADER_LEN as usize..to_usize(total)];
    let next = Some(at + total);
    if crc32fast::hash(body) != crc {
        return Parsed::Bad {
            reason: "record checksum mismatch".into(),
            next,
        };
    }
    let Some(id) = std::str::from_utf8(&body[..to_usize(id_len)])
        .ok()
        .and_then(QueueId::parse)
    else {
        return Parsed::Bad {
            reason: "record id unreadable".into(),
            next,
        };
    };
    Parsed::Record(Parsed1 {
        id,
        slot: Slot {
            segment: 0,
            offset: at + HEADER_LEN + id_len,
            content_len,
            json_len,
        },
        end: at + total,
    })
}

impl super::Spool {
    /// Moves a message out of its segment into a file of its own (a
    /// message waiting for a retry), durably, and only then marks its
    /// record done. A crash in between leaves both; the scan keeps the file.
    pub(super) async fn move_out(&self, id: &QueueId, slot: Slot) -> Result<(), SpoolError> {
        let segments = std::sync::Arc::clone(&self.segments);
        let tmp = self.incoming.join(format!("{id}.moving"));
        let (dest, queue) = (self.file_path(id), self.queue.clone());
        let moved = tokio::task::spawn_blocking(move || -> Result<(), SpoolError> {
            let log = segments.log_path(slot.segment);
            let body = segments
                .read(slot.segment, slot.offset, slot.content_len + slot.json_len)
                .map_err(super::io_error(&log))?;
            let (content, json) = body.split_at(to_usize(slot.content_len));
            let mut tail = json.to_vec();
            tail.extend_from_slice(&super::footer(slot.content_len, json));
            super::finish_file(None, &tmp, &dest, content, &tail, true)?;
            File::open(&queue)
                .and_then(|dir| dir.sync_all())
                .map_err(super::io_error(&queue))
        })
        .await;
        moved.map_err(|_| SpoolError::Cancelled)??;
        if let Some(segment) = self.segments.take(id) {
            self.committer.discard(super::Removal {
                paths: Vec::new(),
                record: Some((id.clone(), segment)),
            })?;
        }
        info!(queue_id = %id, "message waiting for a retry moved out of its segment to a file of its own");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{envelope, small};
    use super::super::{Spool, SpoolSync};
    use super::*;

    fn only_log(dir: &std::path::Path) -> PathBuf {
        let mut logs: Vec<_> = fs::read_dir(dir.join("segments"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect();
        assert_eq!(logs.len(), 1, "{logs:?}");
        logs.pop().unwrap()
    }

    #[tokio::test]
    async fn queued_records_are_found_again_and_finished_segments_go() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let stored = [small(&spool).await, small(&spool).await, small(&spool).await];
        assert_eq!(fs::read_dir(dir.path().join("queue")).unwrap().count(), 0);
        spool.remove(&stored[1].id).await.unwrap();
        let first = only_log(dir.path());
        drop(spool);

        let spool = Spool::open(dir.path()).unwrap();
        let (messages, problems) = spool.scan().unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        let ids: Vec<_> = messages.iter().map(|m| &m.id).collect();
        assert_eq!(ids, [&stored[0].id, &stored[2].id]);
        assert_eq!(messages[0].envelope, envelope());
        assert_eq!(spool.read_head(&messages[0], 100).await.unwrap(), b"x\r\n");
        let mut content = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut spool.open_content(&stored[2].id).await.unwrap(), &mut content)
            .await
            .unwrap();
        assert!(content.starts_with(b"x\r\n"), "read from the record's offset");

        // A new process appends to a new segment; the old one goes with
        // its last message.
        let later = small(&spool).await;
        spool.remove(&stored[0].id).await.unwrap();
        assert!(first.exists());
        spool.remove(&stored[2].id).await.unwrap();
        assert!(!first.exists(), "removed with its last message");
        assert!(!first.with_extension("done").exists());
        assert_eq!(only_log(dir.path()), spool.content_at(&later.id).0);
    }

    #[tokio::test]
    async fn a_record_cut_short_by_a_crash_is_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let kept = small(&spool).await;
        small(&spool).await;
        drop(spool);
        let log = only_log(dir.path());
        let len = fs::metadata(&log).unwrap().len();
        // The second record's last octets never reached the disk.
        fs::OpenOptions::new()
            .write(true)
            .open(&log)
            .unwrap()
            .set_len(len - 5)
            .unwrap();

        let spool = Spool::open(dir.path()).unwrap();
        let (messages, problems) = spool.scan().unwrap();
        assert!(problems.is_empty(), "a cut record is no damage: {problems:?}");
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].id, kept.id);
    }

    #[tokio::test]
    async fn a_damaged_record_is_reported_and_the_ones_after_it_kept() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let stored = [small(&spool).await, small(&spool).await, small(&spool).await];
        let slot = spool.segments.slot(&stored[1].id).unwrap();
        drop(spool);
        let log = only_log(dir.path());
        let mut bytes = fs::read(&log).unwrap();
        bytes[to_usize(slot.offset)] ^= 0xFF; // its content
        fs::write(&log, bytes).unwrap();

        let spool = Spool::open(dir.path()).unwrap();
        let (messages, problems) = spool.scan().unwrap();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].to_string().contains("checksum"), "{}", problems[0]);
        let ids: Vec<_> = messages.iter().map(|m| &m.id).collect();
        assert_eq!(ids, [&stored[0].id, &stored[2].id]);
        let copy = dir.path().join("corrupt").join(log.file_name().unwrap());
        assert!(copy.exists(), "the damaged segment is kept for the operator");
    }

    #[tokio::test]
    async fn a_message_waiting_for_a_retry_moves_to_a_file_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let waiting = small(&spool).await;
        let other = small(&spool).await;
        let mut state = waiting.state.clone();
        state.attempts = 1;
        spool.forget_content(&waiting.id);
        spool.save_state(&waiting.id, &state).await.unwrap();
        let file = dir.path().join("queue").join(format!("{}.msg", waiting.id));
        assert_eq!(spool.content_at(&waiting.id).0, file);
        assert_eq!(spool.load(&waiting.id).unwrap().envelope, envelope());
        spool.remove(&other.id).await.unwrap(); // after the move's mark, in order
        let log = only_log(dir.path());
        let done = fs::read_to_string(log.with_extension("done")).unwrap();
        assert_eq!(done, format!("{}\n{}\n", waiting.id, other.id));
        drop(spool);

        // A crash between the move and its mark: both copies are on disk.
        fs::remove_file(log.with_extension("done")).unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let (messages, problems) = spool.scan().unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        let ids: Vec<_> = messages.iter().map(|m| &m.id).collect();
        assert_eq!(
            ids,
            [&waiting.id, &other.id],
            "the other one comes back: its mark was lost too"
        );
        assert_eq!(messages[0].state.attempts, 1, "the file and its state count");
        assert_eq!(spool.read_head(&messages[0], 100).await.unwrap(), b"x\r\n");
        let done = fs::read_to_string(log.with_extension("done")).unwrap();
        assert_eq!(
            done,
            format!("{}\n", waiting.id),
            "marked done now: its file may go first"
        );

        // Delivered from its file, it does not come back from the segment.
        spool.remove(&waiting.id).await.unwrap();
        drop(spool);
        fs::write(dir.path().join("segments").join("0000000000000099.done"), "orphan\n").unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let (messages, _) = spool.scan().unwrap();
        let ids: Vec<_> = messages.iter().map(|m| &m.id).collect();
        assert_eq!(ids, [&other.id]);
        assert!(!dir.path().join("segments").join("0000000000000099.done").exists());
    }

    #[tokio::test]
    async fn a_full_segment_takes_no_more_and_goes_with_its_last_message() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let mut big = spool.create();
        big.buffer = vec![b'y'; to_usize(SEGMENT_BYTES)]; // as if kept in memory
        let big = spool.commit(big, envelope()).await.unwrap();
        let full = spool.content_at(&big.id).0;
        let next = small(&spool).await;
        assert_ne!(spool.content_at(&next.id).0, full, "a new segment");
        spool.remove(&big.id).await.unwrap();
        assert!(!full.exists());
        assert_eq!(only_log(dir.path()), spool.content_at(&next.id).0);
    }

    #[tokio::test]
    async fn with_per_file_syncs_nothing_goes_to_segments() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open_with(dir.path(), SpoolSync::File).unwrap();
        let stored = small(&spool).await;
        assert!(dir.path().join("queue").join(format!("{}.msg", stored.id)).exists());
        assert_eq!(fs::read_dir(dir.path().join("segments")).unwrap().count(), 0);
    }
}
