//! The received message, read through the gateway's parse.

use crate::bindings::mailgate::plugin::types as wit;
use crate::types::Header;

/// The message at the data stage. Reading headers never copies the body.
#[derive(Debug)]
pub struct Message<'a> {
    inner: &'a wit::Message,
}

/// A MIME part summary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Part {
    /// Index for [`Message::text`].
    pub index: u32,
    /// Media type, lower case, e.g. `text/plain`.
    pub content_type: String,
    /// File name, if any.
    pub filename: Option<String>,
    /// Decoded size in octets.
    pub size: u64,
    /// Where the part's raw (transfer-encoded) content starts in the body,
    /// as [`Message::body_chunks`] and [`Message::raw_body`] count.
    pub raw_offset: u64,
    /// Length of the raw content.
    pub raw_length: u64,
    /// Content-Transfer-Encoding, lower case ("7bit", "base64", ...).
    pub transfer_encoding: String,
    /// The part is an attachment.
    pub is_attachment: bool,
}

impl<'a> Message<'a> {
    pub(crate) fn new(inner: &'a wit::Message) -> Self {
        Self { inner }
    }

    pub(crate) fn inner(&self) -> &'a wit::Message {
        self.inner
    }

    /// Size in octets, trace header included.
    pub fn size(&self) -> u64 {
        self.inner.size()
    }

    /// Every header field, in order.
    pub fn headers(&self) -> Vec<Header> {
        self.inner
            .headers()
            .into_iter()
            .map(|h| Header {
                name: h.name,
                value: h.value,
            })
            .collect()
    }

    /// The values of the fields named `name` (ASCII case ignored).
    pub fn header(&self, name: &str) -> Vec<String> {
        self.inner.header(name)
    }

    /// The first value of the field named `name`.
    pub fn first_header(&self, name: &str) -> Option<String> {
        self.inner.header(name).into_iter().next()
    }

    /// The MIME parts.
    pub fn parts(&self) -> Vec<Part> {
        self.inner
            .parts()
            .into_iter()
            .map(|p| Part {
                index: p.index,
                content_type: p.content_type,
                filename: p.filename,
                size: p.size,
                raw_offset: p.raw_offset,
                raw_length: p.raw_length,
                transfer_encoding: p.transfer_encoding,
                is_attachment: p.is_attachment,
            })
            .collect()
    }

    /// The decoded text of a text part.
    pub fn text(&self, part: &Part) -> Option<String> {
        self.inner.text(part.index)
    }

    /// The decoded text of every text part that is not an attachment.
    pub fn texts(&self) -> Vec<String> {
        self.parts()
            .iter()
            .filter(|p| !p.is_attachment && p.content_type.starts_with("text/"))
            .filter_map(|p| self.text(p))
            .collect()
    }

    /// The whole raw body (after the header section). Prefer
    /// [`Message::body_chunks`] for large messages.
    pub fn raw_body(&self) -> Vec<u8> {
        self.body_chunks().flatten().collect()
    }

    /// The raw body (after the header section), in chunks of up to 64 KiB.
    pub fn body_chunks(&self) -> impl Iterator<Item = Vec<u8>> + '_ {
        let mut offset = 0u64;
        std::iter::from_fn(move || {
            let chunk = self.inner.read_body(offset, 64 * 1024);
            if chunk.is_empty() {
                return None;
            }
            offset += chunk.len() as u64;
            Some(chunk)
        })
    }
}
