//! The message plugins see at DATA: the content, parsed with mail-parser
//! the first time a plugin asks for the parsed view (and only once), shared
//! by every plugin of the chain, and lent to each guest as a `message`
//! resource. Plugins pull what they need (headers, part summaries, decoded
//! text, body chunks); nothing is copied up front, and a chain whose
//! plugins only read the raw size never parses.

use std::sync::{Arc, OnceLock};

use mail_parser::{HeaderName, HeaderValue, MessageParser, MimeHeaders, PartType};

use super::bindings::mailgate::plugin::types::{Header, Part};

type MaybeMessage<'a> = Option<mail_parser::Message<'a>>;

self_cell::self_cell!(
    /// The raw content and its parse, kept together.
    struct Parsed {
        owner: Arc<Vec<u8>>,
        #[covariant]
        dependent: MaybeMessage,
    }

    impl {Debug}
);

/// A received message, parsed when first needed.
#[derive(Debug)]
pub struct ParsedMessage {
    raw: Arc<Vec<u8>>,
    parsed: OnceLock<Parsed>,
}

impl ParsedMessage {
    /// Takes `content` (the message as spooled, trace header included);
    /// it is parsed on first use.
    pub fn new(content: Vec<u8>) -> Self {
        Self {
            raw: Arc::new(content),
            parsed: OnceLock::new(),
        }
    }

    /// Parses now (for a large message, on a blocking thread, before a
    /// plugin asks from the runtime).
    pub fn parse_now(&self) {
        let _ = self.message();
    }

    /// Whether the parse was done.
    #[cfg(test)]
    fn is_parsed(&self) -> bool {
        self.parsed.get().is_some()
    }

    /// The raw content.
    pub fn raw(&self) -> &[u8] {
        self.raw.as_slice()
    }

    fn message(&self) -> Option<&mail_parser::Message<'_>> {
        self.parsed
            .get_or_init(|| Parsed::new(Arc::clone(&self.raw), |raw| parser().parse(raw.as_slice())))
            .borrow_dependent()
            .as_ref()
    }

    /// Size in octets.
    pub fn size(&self) -> u64 {
        self.raw().len() as u64
    }

    /// The top-level header fields as mail-parser has them.
    fn root_headers(&self) -> &[mail_parser::Header<'_>] {
        self.message()
            .and_then(|m| m.parts.first())
            .map_or(&[], |root| root.headers.as_slice())
    }

    /// Every top-level header field, in order.
    pub fn headers(&self) -> Vec<Header> {
        self.root_headers()
            .iter()
            .map(|h| Header {
                name: h.name.as_str().to_owned(),
                value: header_text(self.raw(), h),
            })
            .collect()
    }

    /// The values of the header fields named `name`.
    pub fn header(&self, name: &str) -> Vec<String> {
        self.root_headers()
            .iter()
            .filter(|h| h.name.as_str().eq_ignore_ascii_case(name))
            .map(|h| header_text(self.raw(), h))
            .collect()
    }

    /// Summaries of the leaf MIME parts.
    pub fn parts(&self) -> Vec<Part> {
        let Some(message) = self.message() else {
            return Vec::new();
        };
        let body_start = message.parts.first().map_or(0, |root| u64::from(root.offset_body));
        message
            .parts
            .iter()
            .enumerate()
            .filter(|(_, part)| !matches!(part.body, PartType::Multipart(_)))
            .map(|(index, part)| {
                let content_type = part.content_type().map_or_else(
                    || "text/plain".to_owned(),
                    |ct| match ct.subtype() {
                        Some(sub) => format!("{}/{}", ct.ctype(), sub).to_lowercase(),
                        None => ct.ctype().to_lowercase(),
                    },
                );
                let index = u32::try_from(index).unwrap_or(u32::MAX);
                Part {
                    index,
                    content_type,
                    filename: part.attachment_name().map(str::to_owned),
                    size: part.len() as u64,
                    raw_offset: u64::from(part.offset_body).saturating_sub(body_start),
                    raw_length: u64::from(part.offset_end.saturating_sub(part.offset_body)),
                    transfer_encoding: part
                        .content_transfer_encoding()
                        .map_or_else(|| "7bit".to_owned(), str::to_lowercase),
                    is_attachment: message.attachments.contains(&index),
                }
            })
            .collect()
    }

    /// The decoded text of part `index`, if it is a text part.
    pub fn text(&self, index: u32) -> Option<String> {
        let part = self.message()?.parts.get(usize::try_from(index).ok()?)?;
        match &part.body {
            PartType::Text(text) | PartType::Html(text) => Some(text.to_string()),
            _ => None,
        }
    }

    /// Octets of the raw body (after the header section).
    pub fn read_body(&self, offset: u64, length: u32) -> Vec<u8> {
        let body = self.body();
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(body.len());
        let end = start.saturating_add(length as usize).min(body.len());
        body[start..end].to_vec()
    }

    /// The raw body: everything after the blank line ending the headers.
    pub fn body(&self) -> &[u8] {
        let raw = self.raw();
        let start = self
            .message()
            .and_then(|m| m.parts.first())
            .map_or(raw.len(), |root| root.offset_body as usize);
        raw.get(start..).unwrap_or_default()
    }
}

/// The parser: mail-parser's default parse of each header, except for the
/// fields whose structure `header_text` does not use (addresses, dates,
/// `Received`), which are kept raw instead of being parsed and thrown
/// away. Plugins see the same values (see the test against the default
/// parser); a message's trace fields and address lists cost no parse.
fn parser() -> &'static MessageParser {
    static PARSER: OnceLock<MessageParser> = OnceLock::new();
    PARSER.get_or_init(|| {
        let unstructured = [
            HeaderName::Subject,
            HeaderName::Comments,
            HeaderName::ContentDescription,
            HeaderName::ContentLocation,
            HeaderName::ContentTransferEncoding,
        ];
        let ids = [
            HeaderName::MessageId,
            HeaderName::References,
            HeaderName::InReplyTo,
            HeaderName::ReturnPath,
            HeaderName::ContentId,
            HeaderName::ResentMessageId,
        ];
        let parser = MessageParser::new()
            .default_header_raw()
            .header_content_type(HeaderName::ContentType)
            .header_content_type(HeaderName::ContentDisposition)
            .header_comma_separated(HeaderName::Keywords)
            .header_comma_separated(HeaderName::ContentLanguage);
        let parser = unstructured.into_iter().fold(parser, MessageParser::header_text);
        ids.into_iter().fold(parser, MessageParser::header_id)
    })
}

/// A header's value as text: decoded for unstructured fields, otherwise
/// the raw value unfolded and trimmed.
fn header_text(raw: &[u8], header: &mail_parser::Header<'_>) -> String {
    match &header.value {
        HeaderValue::Text(text) => unfold(text),
        HeaderValue::TextList(list) => unfold(&list.join(", ")),
        _ => {
            let start = header.offset_start as usize;
            let end = (header.offset_end as usize).min(raw.len());
            let value = raw.get(start..end).unwrap_or_default();
            unfold(&String::from_utf8_lossy(value))
        }
    }
}

/// Removes folding (CRLF before whitespace) and surrounding space.
fn unfold(value: &str) -> String {
    value.replace("\r\n", "").replace('\n', "").trim().to_owned()
}

/// The resource type behind `message` handles: a shared parse.
#[derive(Clone, Debug)]
pub struct MessageHandle(pub Arc<ParsedMessage>);

impl std::ops::Deref for MessageHandle {
    type Target = ParsedMessage;

    fn deref(&self) -> &ParsedMessage {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIME: &[u8] = b"Received: from a\r\n\tby b; date\r\nSubject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\nX-Long: one\r\n two\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\npreamble\r\n--b\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\ncaf=C3=A9\r\n--b\r\nContent-Type: application/pdf; name=\"x.pdf\"\r\nContent-Disposition: attachment; filename=\"x.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0=\r\n--b--\r\n";

    #[test]
    fn plugins_see_what_the_default_parse_gives() {
        let message = b"Received: from a.example (a.example [192.0.2.1])\r\n\tby b.example with ESMTP id 1; Sat, 5 Dec 2026 10:00:00 +0000\r\n\
From: =?utf-8?q?J=C3=B6rg?= <j@a.example>, \"B, C\" <b@a.example>\r\n\
To: undisclosed-recipients:;\r\nCc: x@\xff.example\r\nReply-To: <r@a.example>\r\nSender: s@a.example\r\n\
Date: Sat, 5 Dec 2026 10:00:00 +0000 (UTC)\r\nResent-Date: garbage\r\n\
Message-ID: <id1@a.example>\r\nReferences: <r1@a> <r2@a>\r\n In-Reply-To: broken\r\nIn-Reply-To: <r2@a>\r\n\
Return-Path: <>\r\nKeywords: one, =?utf-8?q?tw=C3=B6?=\r\nContent-Language: en, de\r\n\
List-Id: Some list <list.a.example>\r\nList-Unsubscribe: <mailto:u@a.example>\r\n\
Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n and more\r\nComments: =?iso-8859-1?q?caf=E9?=\r\n\
X-Custom: raw =?utf-8?q?not-decoded?=\r\n\twith fold\r\nX-Empty:\r\nX-Bytes: \xfe\xff\r\nMIME-Version: 1.0\r\n\
Content-Type: text/plain; charset=\"utf-8\"\r\nContent-ID: <c@a>\r\n\r\nbody\r\n";
        let ours = ParsedMessage::new(message.to_vec());
        let default = MessageParser::default().parse(message.as_slice()).expect("a parse");
        let expected: Vec<(String, String)> = default.parts[0]
            .headers
            .iter()
            .map(|h| (h.name.as_str().to_owned(), header_text(message, h)))
            .collect();
        let seen: Vec<(String, String)> = ours.headers().into_iter().map(|h| (h.name, h.value)).collect();
        assert_eq!(seen.len(), 24);
        assert_eq!(seen, expected);
        assert_eq!(ours.text(0), default.body_text(0).map(|t| t.into_owned()));
    }

    #[test]
    fn exposes_headers_decoded_and_unfolded() {
        let message = ParsedMessage::new(MIME.to_vec());
        let headers = message.headers();
        assert_eq!(headers[0].name, "Received");
        assert_eq!(message.header("subject"), ["Grüße"]);
        assert_eq!(message.header("X-LONG"), ["one two"]);
        assert!(message.header("missing").is_empty());
    }

    #[test]
    fn summarises_parts_and_decodes_text() {
        let message = ParsedMessage::new(MIME.to_vec());
        let parts = message.parts();
        let text = parts.iter().find(|p| p.content_type == "text/plain").unwrap();
        assert_eq!(message.text(text.index).as_deref(), Some("café"));
        assert!(!text.is_attachment);
        let pdf = parts.iter().find(|p| p.content_type == "application/pdf").unwrap();
        assert_eq!(pdf.filename.as_deref(), Some("x.pdf"));
        assert!(pdf.is_attachment);
        assert_eq!(pdf.size, 5);
        assert_eq!(pdf.transfer_encoding, "base64");
        let raw = message.read_body(pdf.raw_offset, u32::try_from(pdf.raw_length).unwrap());
        assert_eq!(raw.trim_ascii_end(), b"JVBERi0=");
        assert_eq!(text.transfer_encoding, "quoted-printable");
        assert_eq!(message.text(pdf.index), None);
        assert_eq!(message.text(999), None);
    }

    #[test]
    fn parses_only_when_the_parsed_view_is_asked_for() {
        let message = ParsedMessage::new(MIME.to_vec());
        assert_eq!(message.size(), MIME.len() as u64);
        assert_eq!(message.raw(), MIME);
        assert!(!message.is_parsed(), "size and raw content need no parse");
        assert_eq!(message.header("x-long"), ["one two"]);
        assert!(message.is_parsed());
    }

    #[test]
    fn reads_the_raw_body_in_chunks() {
        let message = ParsedMessage::new(b"Subject: x\r\n\r\n0123456789".to_vec());
        assert_eq!(message.read_body(0, 4), b"0123");
        assert_eq!(message.read_body(8, 100), b"89");
        assert!(message.read_body(10, 4).is_empty());
        assert!(message.read_body(u64::MAX, 4).is_empty());
        assert_eq!(message.size(), 24);
    }

    #[test]
    fn garbage_does_not_panic() {
        for content in [&b""[..], b"\r\n", b"no colon here", b"\xff\xfe: \x00"] {
            let message = ParsedMessage::new(content.to_vec());
            let _ = (
                message.headers(),
                message.parts(),
                message.text(0),
                message.read_body(0, 10),
            );
        }
    }
}
