//! The message's octets on the wire: DATA up to its end marker, a BDAT
//! chunk by its size (RFC 3030), and a refused chunk read and thrown away.
//! Content is streamed into the spool writer; memory stays bounded by the
//! read size.

use bytes::Buf;
use tokio::io::AsyncReadExt;
use tokio::time::timeout;

use super::{Connection, READ_CHUNK};
use crate::queue::SpoolWriter;
use crate::server::ConnectionError;
use crate::smtp::chunking::{ChunkReader, Discard};
use crate::smtp::data::{DataOutcome, DataReader, Feed};

/// How reading DATA ended.
pub(super) enum DataEnd {
    Read(DataOutcome),
    TimedOut,
}

/// How reading a BDAT chunk ended.
pub(super) enum ChunkEnd {
    Read(ChunkReader),
    TimedOut,
}

impl Connection {
    /// Streams DATA through the reader into the spool writer, keeping what
    /// follows the final dot as the next commands.
    pub(super) async fn receive_data(
        &mut self,
        mut reader: DataReader,
        writer: &mut SpoolWriter,
    ) -> Result<DataEnd, ConnectionError> {
        let mut content = Vec::with_capacity(READ_CHUNK);
        loop {
            if !self.input.is_empty() {
                content.clear();
                let feed = reader.feed(&self.input, &mut content);
                if !content.is_empty() {
                    self.counters.received.inc_by(content.len() as u64);
                    writer.write(&content).await;
                }
                match feed {
                    Feed::More => self.input.clear(),
                    Feed::Done { consumed } => {
                        self.input.advance(consumed);
                        return Ok(DataEnd::Read(reader.outcome()));
                    }
                }
            }
            if !self.read_more().await? {
                return Ok(DataEnd::TimedOut);
            }
        }
    }

    /// Streams one BDAT chunk (exactly its size) into the spool writer,
    /// keeping what follows it as the next commands.
    pub(super) async fn receive_chunk(
        &mut self,
        mut chunk: ChunkReader,
        writer: &mut SpoolWriter,
    ) -> Result<ChunkEnd, ConnectionError> {
        let mut content = Vec::with_capacity(READ_CHUNK.min(self.input.len().max(1024)));
        loop {
            content.clear();
            let feed = chunk.feed(&self.input, &mut content);
            if !content.is_empty() {
                self.counters.received.inc_by(content.len() as u64);
                writer.write(&content).await;
            }
            match feed {
                Feed::Done { consumed } => {
                    self.input.advance(consumed);
                    return Ok(ChunkEnd::Read(chunk));
                }
                Feed::More => self.input.clear(),
            }
            if !self.read_more().await? {
                return Ok(ChunkEnd::TimedOut);
            }
        }
    }

    /// Reads and drops a refused BDAT chunk of `size` octets (RFC 3030
    /// section 3). False when the client went silent.
    pub(super) async fn discard_chunk(&mut self, size: u64) -> Result<bool, ConnectionError> {
        let mut discard = Discard::new(size);
        loop {
            let (consumed, done) = discard.feed(&self.input);
            self.input.advance(consumed);
            if done {
                return Ok(true);
            }
            if !self.read_more().await? {
                return Ok(false);
            }
        }
    }

    /// Reads more message content into the input buffer; false on the
    /// DATA timeout.
    async fn read_more(&mut self) -> Result<bool, ConnectionError> {
        self.input.reserve(READ_CHUNK);
        match timeout(
            self.settings.settings.data_timeout,
            self.stream.read_buf(&mut self.input),
        )
        .await
        {
            Err(_) => Ok(false),
            Ok(Ok(0)) => Err(ConnectionError::ClosedInData),
            Ok(Ok(_)) => Ok(true),
            Ok(Err(e)) => Err(e.into()),
        }
    }
}
