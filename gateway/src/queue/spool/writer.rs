//! A message being received: its content buffered in memory, spilled to
//! its file in `incoming/` once large, until the spool commits it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use tokio::task::spawn_blocking;

use super::{SpoolError, io_error};
use crate::queue::id::QueueId;

/// Content is buffered in memory up to this size, then written out, so a
/// small message costs one write and large ones stay bounded in memory.
pub(super) const SPILL_BYTES: usize = 128 * 1024;

/// A message being written into `incoming/`. Dropped without commit, it
/// removes its file.
#[derive(Debug)]
pub struct SpoolWriter {
    pub(super) id: QueueId,
    pub(super) path: PathBuf,
    /// The file in `incoming/`, once the content spilled.
    pub(super) file: Option<File>,
    /// Content not yet written to the file.
    pub(super) buffer: Vec<u8>,
    written: u64,
    /// The first write error, reported by the commit.
    pub(super) failed: Option<io::Error>,
}

impl SpoolWriter {
    /// A new message, with a new queue id, to go in `incoming`.
    pub(super) fn new(incoming: &Path) -> Self {
        let id = QueueId::generate();
        Self {
            path: incoming.join(id.as_str()),
            id,
            file: None,
            buffer: Vec::new(),
            written: 0,
            failed: None,
        }
    }

    /// The queue id the message will have.
    pub fn id(&self) -> &QueueId {
        &self.id
    }

    /// Octets written so far.
    pub fn len(&self) -> u64 {
        self.written + self.buffer.len() as u64
    }

    /// True when nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Everything written so far (to give plugins the message).
    pub async fn contents(&self) -> Result<Vec<u8>, SpoolError> {
        let mut content = match &self.file {
            None => Vec::new(),
            Some(_) => {
                let path = self.path.clone();
                let read = spawn_blocking(move || fs::read(&path)).await;
                read.map_err(|_| SpoolError::Cancelled)?.map_err(io_error(&self.path))?
            }
        };
        content.extend_from_slice(&self.buffer);
        Ok(content)
    }

    /// Replaces everything written so far with `content` (a plugin's edits),
    /// keeping the queue id.
    pub async fn rewrite(&mut self, content: &[u8]) {
        if self.file.take().is_some() {
            let _ = fs::remove_file(&self.path);
        }
        self.buffer.clear();
        self.written = 0;
        self.write(content).await;
    }

    /// Appends content. An I/O error is kept and reported by `commit`, so
    /// the session can read the client's data to the end and answer 451.
    pub async fn write(&mut self, bytes: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        self.buffer.extend_from_slice(bytes);
        if self.buffer.len() >= SPILL_BYTES {
            self.spill().await;
        }
    }

    async fn spill(&mut self) {
        let file = self.file.take();
        let buffer = std::mem::take(&mut self.buffer);
        let path = self.path.clone();
        let result = spawn_blocking(move || -> io::Result<(File, Vec<u8>)> {
            let mut file = match file {
                Some(file) => file,
                None => OpenOptions::new().write(true).create_new(true).open(&path)?,
            };
            file.write_all(&buffer)?;
            Ok((file, buffer))
        })
        .await;
        match result {
            Ok(Ok((file, mut buffer))) => {
                self.written += buffer.len() as u64;
                buffer.clear();
                self.buffer = buffer;
                self.file = Some(file);
            }
            Ok(Err(error)) => self.failed = Some(error),
            Err(_) => self.failed = Some(io::Error::other("spool write task cancelled")),
        }
    }
}

impl Drop for SpoolWriter {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            // Best effort: start-up clears incoming/ anyway.
            let _ = fs::remove_file(&self.path);
        }
    }
}
