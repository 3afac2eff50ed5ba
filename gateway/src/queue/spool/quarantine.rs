//! The quarantine: messages a plugin held back at the data stage, kept in
//! `quarantine/` with the same format and durability as the queue, never
//! delivered until an operator releases them. Listing, reading, releasing
//! (a move into the queue, as the message was accepted), deleting and
//! expiring them.

use std::fs::{self, File};
use std::io::Read;
use std::path::PathBuf;

use serde::Serialize;
use tokio::task::spawn_blocking;

use super::{Spool, SpoolError, StoredMessage, io_error, read_trailer};
use crate::queue::envelope::{DeliveryState, Envelope};
use crate::queue::id::QueueId;

/// A quarantined message, as operators see it.
#[derive(Clone, Debug, Serialize)]
pub struct Quarantined {
    /// Its id.
    pub id: QueueId,
    /// Content length in octets.
    pub size: u64,
    /// Its envelope; `quarantine` holds the reason, `quarantined_by` the
    /// plugin that decided, `received_at` when (always at the data stage).
    pub envelope: Envelope,
}

impl Spool {
    fn quarantine_path(&self, id: &QueueId) -> PathBuf {
        self.quarantine.join(format!("{id}.msg"))
    }

    /// Every quarantined message, oldest first.
    pub async fn quarantined(&self) -> Result<Vec<Quarantined>, SpoolError> {
        let dir = self.quarantine.clone();
        let listed = spawn_blocking(move || -> Result<Vec<Quarantined>, SpoolError> {
            let mut found = Vec::new();
            for entry in fs::read_dir(&dir).map_err(io_error(&dir))? {
                let path = entry.map_err(io_error(&dir))?.path();
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                let Some(id) = name.strip_suffix(".msg").and_then(QueueId::parse) else {
                    continue;
                };
                let mut file = File::open(&path).map_err(io_error(&path))?;
                match read_trailer(&mut file) {
                    Ok((size, envelope)) => found.push(Quarantined { id, size, envelope }),
                    Err(reason) => tracing::warn!(queue_id = %id, reason, "unreadable quarantine entry"),
                }
            }
            found.sort_by_key(|q| q.envelope.received_at);
            Ok(found)
        })
        .await;
        listed.map_err(|_| SpoolError::Cancelled)?
    }

    /// One quarantined message and its content.
    pub async fn quarantined_message(&self, id: &QueueId) -> Result<(Quarantined, Vec<u8>), SpoolError> {
        let path = self.quarantine_path(id);
        let id = id.clone();
        let read = spawn_blocking(move || -> Result<(Quarantined, Vec<u8>), SpoolError> {
            let mut file = File::open(&path).map_err(io_error(&path))?;
            let (size, envelope) = read_trailer(&mut file).map_err(|reason| SpoolError::Corrupt {
                id: id.to_string(),
                reason,
            })?;
            let mut content = Vec::new();
            File::open(&path)
                .and_then(|f| f.take(size).read_to_end(&mut content))
                .map_err(io_error(&path))?;
            Ok((Quarantined { id, size, envelope }, content))
        })
        .await;
        read.map_err(|_| SpoolError::Cancelled)?
    }

    /// Moves a quarantined message into the queue, as it was accepted (the
    /// chain does not run again), durably: rename, then fsync the queue.
    pub async fn release(&self, id: &QueueId) -> Result<StoredMessage, SpoolError> {
        let (from, to, queue) = (self.quarantine_path(id), self.file_path(id), self.queue.clone());
        let sync = std::sync::Arc::clone(&self.queue_sync);
        let moved = spawn_blocking(move || {
            fs::rename(&from, &to).map_err(io_error(&from))?;
            sync.sync().map_err(io_error(&queue))
        })
        .await;
        moved.map_err(|_| SpoolError::Cancelled)??;
        let mut message = self.load(id)?;
        message.state = DeliveryState::for_envelope(&message.envelope);
        Ok(message)
    }

    /// Removes a quarantined message.
    pub async fn delete_quarantined(&self, id: &QueueId) -> Result<(), SpoolError> {
        let path = self.quarantine_path(id);
        let removed = spawn_blocking(move || fs::remove_file(&path).map_err(io_error(&path))).await;
        removed.map_err(|_| SpoolError::Cancelled)?
    }
}
