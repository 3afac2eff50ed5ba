//! The content of freshly committed small messages, kept in memory so that
//! their first delivery attempt sends them (and a bounce quotes them)
//! without opening and reading the file: most messages are relayed within
//! moments of their 250. The file stays the truth: an entry is only a copy
//! of what is already durable, bounded in total, and dropped when the
//! message leaves the queue or its attempt leaves it waiting for a retry.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

use crate::queue::id::QueueId;

/// At most this much content is kept in memory, over all messages.
pub(super) const CACHE_BYTES: usize = 16 * 1024 * 1024;

/// Content of queued messages kept in memory, by id.
#[derive(Debug, Default)]
pub(super) struct ContentCache {
    inner: Mutex<Entries>,
}

#[derive(Debug, Default)]
struct Entries {
    by_id: HashMap<QueueId, Arc<Vec<u8>>>,
    bytes: usize,
}

impl ContentCache {
    fn lock(&self) -> MutexGuard<'_, Entries> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keeps `content` for `id` if it fits in the budget.
    pub(super) fn keep(&self, id: &QueueId, content: Vec<u8>) {
        let mut entries = self.lock();
        if entries.bytes + content.len() > CACHE_BYTES {
            return;
        }
        entries.bytes += content.len();
        if let Some(old) = entries.by_id.insert(id.clone(), Arc::new(content)) {
            entries.bytes -= old.len();
        }
    }

    /// The content of `id`, if kept.
    pub(super) fn get(&self, id: &QueueId) -> Option<Arc<Vec<u8>>> {
        self.lock().by_id.get(id).cloned()
    }

    /// Drops the copy of `id`, if any.
    pub(super) fn forget(&self, id: &QueueId) {
        let mut entries = self.lock();
        if let Some(old) = entries.by_id.remove(id) {
            entries.bytes -= old.len();
        }
    }

    /// Octets kept.
    #[cfg(test)]
    pub(super) fn bytes(&self) -> usize {
        self.lock().bytes
    }
}

/// A queued message's content being read for delivery: from memory when
/// kept, else from its file (whose reads must stop at the content length).
#[derive(Debug)]
pub enum Content {
    /// The in-memory copy and how far it was read.
    Memory(Arc<Vec<u8>>, usize),
    /// The spool file.
    File(tokio::fs::File),
}

impl AsyncRead for Content {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Content::Memory(bytes, read) => {
                let rest = bytes.get(*read..).unwrap_or_default();
                let n = rest.len().min(buf.remaining());
                buf.put_slice(&rest[..n]);
                *read += n;
                Poll::Ready(Ok(()))
            }
            Content::File(file) => Pin::new(file).poll_read(cx, buf),
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;

    #[test]
    fn the_cache_keeps_to_its_budget() {
        let cache = ContentCache::default();
        let (a, b) = (QueueId::generate(), QueueId::generate());
        cache.keep(&a, vec![1; CACHE_BYTES - 10]);
        cache.keep(&b, vec![2; 11]);
        assert!(cache.get(&b).is_none(), "over the budget: not kept");
        assert_eq!(cache.bytes(), CACHE_BYTES - 10);
        cache.forget(&a);
        assert_eq!(cache.bytes(), 0);
        cache.keep(&b, vec![2; 11]);
        assert_eq!(cache.get(&b).unwrap().len(), 11);
    }

    #[tokio::test]
    async fn memory_content_reads_in_pieces() {
        let mut content = Content::Memory(Arc::new(b"hello world".to_vec()), 0);
        let mut first = [0u8; 4];
        content.read_exact(&mut first).await.unwrap();
        let mut rest = Vec::new();
        content.read_to_end(&mut rest).await.unwrap();
        assert_eq!((&first[..], &rest[..]), (&b"hell"[..], &b"o world"[..]));
    }
}
