//! CHUNKING (RFC 3030): the octets of one `BDAT` chunk, read beside the
//! DATA reader. A chunk is delimited by its size alone, so its content is
//! transparent (no dot-stuffing, no end marker); the `DataReader` in its
//! chunked mode applies the same limits and line policies as DATA, so the
//! stored message is the one DATA would have stored. Memory stays bounded
//! by the input chunk size whatever the BDAT size.

use super::command::Bdat;
use super::data::{DataReader, Feed};

/// Reads exactly one chunk's octets through the message's reader.
#[derive(Clone, Debug)]
pub struct ChunkReader {
    reader: DataReader,
    size: u64,
    remaining: u64,
    last: bool,
}

impl ChunkReader {
    /// A reader for the chunk announced by `bdat`, continuing `reader`.
    pub fn new(reader: DataReader, bdat: Bdat) -> Self {
        Self {
            reader,
            size: bdat.size,
            remaining: bdat.size,
            last: bdat.last,
        }
    }

    /// Consumes input up to the end of the chunk, appending content to
    /// `out`; `Done` tells how much of `input` belonged to the chunk (the
    /// rest is the client's next commands). At the end of the last chunk
    /// the content is finished (see `DataReader::finish_chunks`).
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Feed {
        let take = usize::try_from(self.remaining).map_or(input.len(), |r| r.min(input.len()));
        let _ = self.reader.feed(&input[..take], out);
        self.remaining -= take as u64;
        if self.remaining > 0 {
            return Feed::More;
        }
        if self.last {
            self.reader.finish_chunks(out);
        }
        Feed::Done { consumed: take }
    }

    /// How the message ended, once the last chunk has been read.
    pub fn outcome(&self) -> Option<super::data::DataOutcome> {
        (self.last && self.remaining == 0).then(|| self.reader.outcome())
    }

    /// True when the whole chunk has been read.
    pub fn is_done(&self) -> bool {
        self.remaining == 0
    }

    /// The chunk's size, whether it was the last, and the message's reader.
    pub fn into_parts(self) -> (u64, bool, DataReader) {
        (self.size, self.last, self.reader)
    }
}

/// Counts down the octets of a refused chunk, which must still be read
/// and thrown away.
#[derive(Clone, Copy, Debug)]
pub struct Discard {
    remaining: u64,
}

impl Discard {
    /// Discards `size` octets.
    pub fn new(size: u64) -> Self {
        Self { remaining: size }
    }

    /// Consumes input up to the end of the chunk; returns how much of
    /// `input` belonged to it, and whether the chunk has ended.
    pub fn feed(&mut self, input: &[u8]) -> (usize, bool) {
        let take = usize::try_from(self.remaining).map_or(input.len(), |r| r.min(input.len()));
        self.remaining -= take as u64;
        (take, self.remaining == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::data::{BareLineEndings, DataOutcome, DataPolicy, LongLines};

    fn policy() -> DataPolicy {
        DataPolicy {
            max_bytes: 1000,
            bare_line_endings: BareLineEndings::Normalize,
            long_lines: LongLines::Reject,
            max_hops: 100,
        }
    }

    #[test]
    fn a_chunk_ends_at_its_size_whatever_the_bytes() {
        let mut reader = DataReader::chunked(policy());
        let mut out = Vec::new();
        for (piece, last) in [(&b"Subject: a\r\n\r\n.\r\n"[..], false), (b"x", true)] {
            let mut chunk = ChunkReader::new(
                reader,
                Bdat {
                    size: piece.len() as u64,
                    last,
                },
            );
            let mut input = piece.to_vec();
            input.extend_from_slice(b"BDAT 1 LAST\r\n");
            assert_eq!(chunk.feed(&input, &mut out), Feed::Done { consumed: piece.len() });
            assert!(chunk.is_done());
            reader = chunk.into_parts().2;
        }
        assert_eq!(out, b"Subject: a\r\n\r\n.\r\nx\r\n");
        assert!(matches!(reader.outcome(), DataOutcome::Complete(_)));
    }

    #[test]
    fn a_zero_length_last_chunk_finishes_the_message() {
        let mut out = Vec::new();
        let mut reader = DataReader::chunked(policy());
        let _ = reader.feed(b"a: b\r\n\r\nbody", &mut out);
        let mut chunk = ChunkReader::new(reader, Bdat { size: 0, last: true });
        assert_eq!(chunk.feed(b"QUIT\r\n", &mut out), Feed::Done { consumed: 0 });
        assert_eq!(out, b"a: b\r\n\r\nbody\r\n");
    }

    #[test]
    fn discarding_counts_down_across_reads() {
        let mut discard = Discard::new(5);
        assert_eq!(discard.feed(b"abc"), (3, false));
        assert_eq!(discard.feed(b"defQUIT"), (2, true));
        assert_eq!(Discard::new(0).feed(b"QUIT"), (0, true));
    }
}
